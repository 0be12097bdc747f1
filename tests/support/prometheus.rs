//! PulseHub's `/metrics` page (Prometheus text format), parsed into samples
//! that tests sum and filter by name and labels.

use std::collections::{BTreeMap, BTreeSet};

/// The samples of a Prometheus text page: name, labels, value.
#[derive(Debug)]
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    /// Enough of the text format for PulseHub's own output: label values
    /// hold no quotes or commas.
    pub fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value));
        }
        Samples(samples)
    }

    /// The samples of `name` whose labels include `labels`.
    pub fn matching<'s>(
        &'s self,
        name: &'s str,
        labels: &'s [(&str, &str)],
    ) -> impl Iterator<Item = (&'s BTreeMap<String, String>, f64)> + 's {
        self.0.iter().filter_map(move |(n, l, v)| {
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(key, value)| l.get(*key).is_some_and(|v| v == value));
            wanted.then_some((l, *v))
        })
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// The values of label `key` among the samples of `name`.
    pub fn label_values(&self, name: &str, labels: &[(&str, &str)], key: &str) -> BTreeSet<String> {
        self.matching(name, labels)
            .filter_map(|(l, _)| l.get(key).cloned())
            .collect()
    }
}

/// [`Samples::sum`] straight from the text of a page: the sum of the samples
/// of `name` whose labels include every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    Samples::parse(text).sum(name, labels)
}

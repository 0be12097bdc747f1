//! Browser and OS families from the uap-core regex database, through the
//! `ua-parser` crate (the reference Rust implementation of uap-core).
//!
//! Only uap-core's `user_agent_parsers` and `os_parsers` are bundled (see
//! `data/README.md`): its `device_parsers` section would more than double the
//! memory of the compiled parser (natively 22 MB instead of 9 MB once built)
//! for brand and model names that this plugin does not report.

use ua_parser::{os, user_agent};

/// uap-core's `user_agent_parsers` and `os_parsers`, as JSON.
const UAP_REGEXES: &str = include_str!("../../data/uap-regexes.json");

/// The value uap-core gives for an unknown family, used here as well.
pub(crate) const OTHER: &str = "Other";

/// The compiled browser and OS extractors.
pub(crate) struct Families {
    browser: user_agent::Extractor<'static>,
    os: os::Extractor<'static>,
}

impl Families {
    pub(crate) fn new() -> Result<Self, String> {
        let regexes: ua_parser::Regexes<'static> = serde_json::from_str(UAP_REGEXES)
            .map_err(|e| format!("uap-core regex database is not valid: {e}"))?;
        let browser = user_agent::Builder::new()
            .push_all(regexes.user_agent_parsers)
            .map_err(|e| format!("uap-core browser regexes failed to compile: {e}"))?
            .build()
            .map_err(|e| format!("uap-core browser regexes failed to build: {e:?}"))?;
        let os = os::Builder::new()
            .push_all(regexes.os_parsers)
            .map_err(|e| format!("uap-core OS regexes failed to compile: {e:?}"))?
            .build()
            .map_err(|e| format!("uap-core OS regexes failed to build: {e:?}"))?;
        Ok(Self { browser, os })
    }

    /// uap-core's browser family, or [`OTHER`].
    pub(crate) fn browser(&self, user_agent: &str) -> String {
        self.browser
            .extract(user_agent)
            .map(|v| v.family.into_owned())
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| OTHER.to_owned())
    }

    /// uap-core's OS family, or [`OTHER`].
    pub(crate) fn os(&self, user_agent: &str) -> String {
        self.os
            .extract(user_agent)
            .map(|v| v.os.into_owned())
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| OTHER.to_owned())
    }
}

//! Accuracy of the device-type classification on a labelled set of 1100
//! User-Agents (`tests/data/ua-device-labels.tsv`), plus the cost of building
//! and running the classifier.
//!
//! `cargo test --release -p device-classifier --test accuracy -- --nocapture`
//! prints the report; `DC_SHOW_ERRORS=1` also lists every misclassified UA.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use device_classifier::{Classifier, DeviceType};

/// Counts live and peak heap bytes, to report what the classifier needs.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds counters.
#[expect(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The tests of this file run one at a time, so that the heap counters only
/// see one of them.
static SERIAL: Mutex<()> = Mutex::new(());

/// Minimum overall accuracy (achieved 0.854 = 939/1100).
const OVERALL_FLOOR: f64 = 0.83;

/// Minimum (recall, precision) per class, about five points under what is
/// achieved (in the comments). Recall is low where the set holds devices
/// known only by an obscure model number (no-name TVs and smart displays, car
/// units, media players, kids' watches); precision is low for mobile and
/// tablet because that is where such devices land.
const CLASS_FLOORS: [(DeviceType, f64, f64); 8] = [
    (DeviceType::Desktop, 0.92, 0.93),  // 0.973, 0.986
    (DeviceType::Mobile, 0.93, 0.58),   // 0.980, 0.631
    (DeviceType::Tablet, 0.82, 0.62),   // 0.873, 0.675
    (DeviceType::Tv, 0.67, 0.91),       // 0.720, 0.964
    (DeviceType::Console, 0.90, 0.93),  // 0.960, 1.000
    (DeviceType::Wearable, 0.77, 0.93), // 0.820, 1.000
    (DeviceType::Bot, 0.93, 0.93),      // 0.980, 0.980
    (DeviceType::Other, 0.54, 0.93),    // 0.593, 0.989
];

const CLASSES: [DeviceType; 9] = [
    DeviceType::Desktop,
    DeviceType::Mobile,
    DeviceType::Tablet,
    DeviceType::Tv,
    DeviceType::Console,
    DeviceType::Wearable,
    DeviceType::Bot,
    DeviceType::Other,
    DeviceType::Unknown,
];

fn parse_type(name: &str) -> DeviceType {
    CLASSES
        .into_iter()
        .find(|t| t.as_str() == name)
        .unwrap_or_else(|| panic!("unknown label {name:?}"))
}

struct Row {
    user_agent: String,
    label: DeviceType,
    source: String,
}

fn rows() -> Vec<Row> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ua-device-labels.tsv"
    );
    let text = std::fs::read_to_string(path).expect("labelled data set is readable");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("user_agent\tdevice_type\tsource"),
        "TSV header"
    );
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let (Some(ua), Some(label), Some(source), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                panic!("malformed row: {line:?}");
            };
            Row {
                user_agent: ua.to_owned(),
                label: parse_type(label),
                source: source.to_owned(),
            }
        })
        .collect()
}

#[test]
fn accuracy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rows = rows();
    assert_eq!(rows.len(), 1100, "data set size");
    let classifier = Classifier::new().expect("classifier builds");
    let show_errors = std::env::var_os("DC_SHOW_ERRORS").is_some();

    // (label, predicted) -> count
    let mut confusion: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let index = |t: DeviceType| CLASSES.iter().position(|c| *c == t).expect("known class");
    let mut correct = 0;
    for row in &rows {
        let predicted = classifier.classify(&row.user_agent).device_type;
        *confusion
            .entry((index(row.label), index(predicted)))
            .or_default() += 1;
        if predicted == row.label {
            correct += 1;
        } else if show_errors {
            println!(
                "MISS {:>8} -> {:<8} {:<40} {}",
                row.label.as_str(),
                predicted.as_str(),
                row.source,
                row.user_agent
            );
        }
    }
    let overall = correct as f64 / rows.len() as f64;

    println!("\ndevice-type accuracy on {} labelled UAs", rows.len());
    println!(
        "{:<9} {:>6} {:>6} {:>6} {:>9} {:>7}",
        "class", "count", "pred", "tp", "precision", "recall"
    );
    let mut failures = Vec::new();
    for (i, class) in CLASSES.iter().enumerate() {
        let count: usize = (0..CLASSES.len())
            .map(|p| confusion.get(&(i, p)).copied().unwrap_or(0))
            .sum();
        let predicted: usize = (0..CLASSES.len())
            .map(|l| confusion.get(&(l, i)).copied().unwrap_or(0))
            .sum();
        let tp = confusion.get(&(i, i)).copied().unwrap_or(0);
        let precision = if predicted == 0 {
            1.0
        } else {
            tp as f64 / predicted as f64
        };
        let recall = if count == 0 {
            1.0
        } else {
            tp as f64 / count as f64
        };
        println!(
            "{:<9} {count:>6} {predicted:>6} {tp:>6} {precision:>9.3} {recall:>7.3}",
            class.as_str()
        );
        if let Some(&(_, min_recall, min_precision)) = CLASS_FLOORS.iter().find(|f| f.0 == *class) {
            if recall < min_recall {
                failures.push(format!(
                    "{} recall {recall:.3} < {min_recall}",
                    class.as_str()
                ));
            }
            if precision < min_precision {
                failures.push(format!(
                    "{} precision {precision:.3} < {min_precision}",
                    class.as_str()
                ));
            }
        }
    }
    println!("overall accuracy: {correct}/{} = {overall:.3}", rows.len());

    println!("\nconfusion (rows = label, columns = predicted):");
    print!("{:<9}", "");
    for c in CLASSES {
        print!(" {:>8}", c.as_str());
    }
    println!();
    for (i, c) in CLASSES.iter().enumerate() {
        print!("{:<9}", c.as_str());
        for p in 0..CLASSES.len() {
            print!(" {:>8}", confusion.get(&(i, p)).copied().unwrap_or(0));
        }
        println!();
    }

    assert!(
        overall >= OVERALL_FLOOR,
        "overall accuracy {overall:.3} < {OVERALL_FLOOR}"
    );
    // "unknown" is not a label of the set, so every class of it has a floor.
    assert_eq!(CLASS_FLOORS.len(), CLASSES.len() - 1);
    assert!(failures.is_empty(), "per-class floors: {failures:?}");
}

/// Time and memory of building the classifier and of classifying UAs never
/// seen before. Printed only: no timing assertions (debug builds are slow).
#[test]
fn cost() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rows = rows();

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();
    let classifier = Classifier::new().expect("classifier builds");
    let build = start.elapsed();
    let built = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let build_peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);

    let time_pass = |classifier: &Classifier| {
        let mut slowest = Duration::ZERO;
        let start = Instant::now();
        for row in &rows {
            let one = Instant::now();
            std::hint::black_box(classifier.classify(std::hint::black_box(&row.user_agent)));
            slowest = slowest.max(one.elapsed());
        }
        (start.elapsed() / rows.len() as u32, slowest)
    };
    let (first, first_max) = time_pass(&classifier);
    let (second, second_max) = time_pass(&classifier);
    let warmed = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);

    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "\nClassifier::new(): {build:?}, heap {:.1} MiB (peak {:.1} MiB while building)",
        mib(built),
        mib(build_peak)
    );
    println!(
        "classify, first sight of {} UAs: mean {first:?}, slowest {first_max:?}",
        rows.len()
    );
    println!("classify, same UAs again:       mean {second:?}, slowest {second_max:?}");
    println!(
        "heap after both passes: {:.1} MiB (peak {:.1} MiB)",
        mib(warmed),
        mib(peak)
    );
    drop(classifier);
}

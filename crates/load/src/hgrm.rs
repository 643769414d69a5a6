//! HdrHistogram's percentile distribution as text (`.hgrm`), the format of the Java library's
//! `outputPercentileDistribution` that HdrHistogram's plotter and wrk2 users read: a header,
//! one row per percentile step (value, percentile, total count so far, 1/(1-percentile)), five
//! steps per halving of the distance to 100%, and the `#[Mean = ...]` footer. The Rust crate
//! has the iterator but not the printer, so it is here, byte for byte as Java prints it.
//!
//! Values are written in milliseconds (recorded in microseconds, scaled by 1000), with as many
//! decimals as the histogram has significant digits.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Steps per halving of the distance to 100%: HdrHistogram's default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Recorded microseconds per written millisecond.
pub const MICROS_PER_MILLI: f64 = 1000.0;

/// The sub-bucket count HdrHistogram's footer reports: the power of two that covers
/// `2 × 10^digits`, as the histogram sizes its buckets.
fn sub_bucket_count(significant_digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(significant_digits))).next_power_of_two()
}

/// Writes `histogram`'s percentile distribution, its values divided by `scale`.
pub fn write(histogram: &Histogram<u64>, scale: f64, out: &mut impl Write) -> io::Result<()> {
    let digits = usize::from(histogram.sigfig());
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / scale;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10} {:14.2}", 1.0 / (1.0 - quantile))?;
        } else {
            writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10}")?;
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (histogram.mean() / scale, histogram.stdev() / scale, histogram.max() as f64 / scale)
    };
    writeln!(out, "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]")?;
    writeln!(out, "#[Max     = {max:12.digits$}, Total count    = {:12}]", histogram.len())?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    )
}

/// A percentile distribution read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// `(value, percentile as a fraction, total count)` per row.
    pub rows: Vec<(f64, f64, u64)>,
    pub mean: f64,
    pub max: f64,
    pub total_count: u64,
}

/// Reads a percentile distribution as [`write`] (or HdrHistogram) writes it; `None` if the text
/// is not one.
pub fn read(text: &str) -> Option<Distribution> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    if header != ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"] {
        return None;
    }
    let footer_field = |line: &str, name: &str| -> Option<f64> {
        let start = line.find(name)? + name.len();
        let rest = line[start..].trim_start().strip_prefix('=')?;
        rest.split([',', ']']).next()?.trim().parse().ok()
    };
    let (mut rows, mut mean, mut max, mut total_count) = (Vec::new(), None, None, None);
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("#[Mean") {
            mean = footer_field(line, "Mean");
        } else if line.starts_with("#[Max") {
            max = footer_field(line, "Max");
            total_count = footer_field(line, "Total count").map(|c| c as u64);
        } else if line.starts_with("#[Buckets") {
            continue;
        } else {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !(3..=4).contains(&fields.len()) {
                return None;
            }
            rows.push((fields[0].parse().ok()?, fields[1].parse().ok()?, fields[2].parse().ok()?));
        }
    }
    Some(Distribution { rows, mean: mean?, max: max?, total_count: total_count? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::latency_histogram;

    fn written(histogram: &Histogram<u64>) -> String {
        let mut out = Vec::new();
        write(histogram, MICROS_PER_MILLI, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_distribution_reads_back_as_recorded() {
        let mut histogram = latency_histogram();
        for us in 1..=10_000u64 {
            histogram.record(us * 10).unwrap(); // 10 µs to 100 ms, evenly
        }
        let text = written(&histogram);
        let read = read(&text).expect("a percentile distribution");
        assert_eq!(read.total_count, 10_000);
        assert!((read.max - 100.0).abs() < 0.1, "max {} ms", read.max);
        assert!((read.mean - 50.0).abs() < 0.1, "mean {} ms", read.mean);
        let last = *read.rows.last().unwrap();
        assert_eq!(last.1, 1.0, "the last row is the 100th percentile");
        assert_eq!(last.2, 10_000, "and counts every value");
        assert!(read.rows.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        let median = read.rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((median.0 - 50.0).abs() < 0.1, "median {} ms", median.0);
    }

    #[test]
    fn the_layout_is_hdrhistograms() {
        let mut histogram = latency_histogram();
        histogram.record(1_000).unwrap();
        histogram.record(2_000).unwrap();
        let text = written(&histogram);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "       1.000 0.000000000000          1           1.00");
        assert_eq!(lines[lines.len() - 4], "       2.000 1.000000000000          2");
        assert_eq!(lines[lines.len() - 3], "#[Mean    =        1.500, StdDeviation   =        0.500]");
        assert_eq!(lines[lines.len() - 2], "#[Max     =        2.000, Total count    =            2]");
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with(", SubBuckets     =         2048]"));
    }

    #[test]
    fn an_empty_histogram_still_has_its_header_and_footer() {
        let read = read(&written(&latency_histogram())).unwrap();
        assert!(read.rows.is_empty());
        assert_eq!(read.total_count, 0);
    }

    #[test]
    fn text_that_is_no_distribution_is_not_read() {
        assert_eq!(read("Value Percentile\n1 2 3\n"), None);
        assert_eq!(read(""), None);
    }
}

//! `wrk --latency` reports, read once for every benchmark that runs it.

/// Throughput and latency from one `wrk --latency` run.
#[derive(Clone, Copy, Default, Debug)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `wrk`'s latency cells ("512.00us", "1.20ms", "2.00s") in ms; NaN when unreadable.
fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

/// Reads `Requests/sec` and the 50% and 99% latency lines of a `wrk --latency` report.
pub fn parse(report: &str) -> Wrk {
    let mut w = Wrk::default();
    for l in report.lines() {
        let t = l.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            w.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            w.p99_ms = parse_ms(v);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rate_and_percentiles() {
        let w = super::parse(
            "  Latency Distribution\n     50%  512.00us\n     99%    2.50ms\nRequests/sec:  1234.5\n",
        );
        assert_eq!(w.rps, 1234.5);
        assert!((w.p50_ms - 0.512).abs() < 1e-9);
        assert!((w.p99_ms - 2.5).abs() < 1e-9);
    }
}

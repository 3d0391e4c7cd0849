//! Numbers and words in reasons, labels and messages.

use kora_model::Category;

/// A number as people read it: whole numbers without decimals, others with one (or three
/// when below 10), thousands separated by commas.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "unknown".to_owned();
    }
    let rounded = v.round();
    if (v - rounded).abs() < 1e-9 {
        return group(rounded as i64);
    }
    if v.abs() < 10.0 {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return s.to_owned();
    }
    let tenths = (v * 10.0).round() as i64;
    let whole = tenths / 10;
    let frac = (tenths % 10).abs();
    if frac == 0 {
        group(whole)
    } else {
        format!("{}.{}", group(whole), frac)
    }
}

fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// Dollars: cents from one dollar up; below, three significant digits (at least two
/// decimals), so a fraction of a cent never prints as `$0.0000`.
pub fn usd(v: f64) -> String {
    if !v.is_finite() {
        return "unknown".to_owned();
    }
    if v == 0.0 {
        return "$0".to_owned();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a >= 1.0 {
        return format!("{sign}${a:.2}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(2) as usize;
    let s = format!("{a:.decimals$}");
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut frac = frac.trim_end_matches('0').to_owned();
    while frac.len() < 2 {
        frac.push('0');
    }
    format!("{sign}${whole}.{frac}")
}

/// The category in words.
pub fn category_words(c: Category) -> &'static str {
    match c {
        Category::ModelFit => "model fit",
        Category::Context => "context window",
        Category::Latency => "tail latency",
        Category::Concurrency => "concurrency",
        Category::Reliability => "reliability",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(4500.0), "4,500");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(4512.34), "4,512.3");
        assert_eq!(num(2.5), "2.5");
        assert_eq!(num(0.125), "0.125");
        assert_eq!(num(-1500.0), "-1,500");
        assert_eq!(usd(0.00213), "$0.00213");
        assert_eq!(usd(2.1), "$2.10");
    }

    /// A cost of a fraction of a cent printed as `$0.0000` (issue 12): significant digits.
    #[test]
    fn small_costs_keep_significant_digits() {
        assert_eq!(usd(0.000042), "$0.000042");
        assert_eq!(usd(0.0000123456), "$0.0000123");
        assert_eq!(usd(0.0048), "$0.0048");
        assert_eq!(usd(0.5), "$0.50");
        assert_eq!(usd(0.125), "$0.125");
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(12.345), "$12.35");
        assert_ne!(usd(0.00001), "$0.0000");
    }
}

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

/// Dollars: four decimals below one cent, else two or three.
pub fn usd(v: f64) -> String {
    if v < 0.01 {
        format!("${v:.4}")
    } else if v < 1.0 {
        format!("${v:.3}")
    } else {
        format!("${v:.2}")
    }
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
        assert_eq!(usd(0.00213), "$0.0021");
        assert_eq!(usd(2.1), "$2.10");
    }
}

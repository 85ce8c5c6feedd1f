//! Medians and the ratio of paired samples with its 95 % confidence
//! interval (on the logarithms: a ratio's spread is multiplicative).

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Geometric mean of `a[i] / b[i]` over the pairs, with its 95 % interval
/// from Student's t on the log ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    pub pairs: usize,
}

pub fn paired_ratio(pairs: &[(f64, f64)]) -> Option<Ratio> {
    let logs: Vec<f64> = pairs
        .iter()
        .filter(|(a, b)| *a > 0.0 && *b > 0.0)
        .map(|(a, b)| (a / b).ln())
        .collect();
    let n = logs.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mean = logs.iter().sum::<f64>() / nf;
    let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0);
    let half = t975(n - 1) * (var / nf).sqrt();
    Some(Ratio {
        ratio: mean.exp(),
        low: (mean - half).exp(),
        high: (mean + half).exp(),
        pairs: n,
    })
}

/// Student's t, two-sided 95 %, for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        d if d <= 60 => 2.00,
        _ => 1.96,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_of_a_constant_factor_has_no_spread() {
        let r = paired_ratio(&[(1.0, 2.0), (3.0, 6.0), (5.0, 10.0)]).unwrap();
        assert!((r.ratio - 0.5).abs() < 1e-12);
        assert!((r.low - 0.5).abs() < 1e-12 && (r.high - 0.5).abs() < 1e-12);
        assert_eq!(r.pairs, 3);
    }

    #[test]
    fn ratio_interval_brackets_the_ratio() {
        let r = paired_ratio(&[(1.0, 2.0), (1.2, 2.0), (0.8, 2.0), (1.1, 2.0)]).unwrap();
        assert!(r.low < r.ratio && r.ratio < r.high, "{r:?}");
        assert!(paired_ratio(&[(1.0, 2.0)]).is_none());
    }
}

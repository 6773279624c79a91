//! Reading the Prometheus text exposition: the value of a series, the metric names in a text.

/// Sum of the samples of a Prometheus text exposition matching `name` and `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Every `gateway_[a-z_]+` metric name in `text`, histogram series suffixes (`_bucket`, `_sum`,
/// `_count`) folded into the base name. A name must start the word (`wetrials_gateway_x` is not
/// one).
pub fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = std::collections::BTreeSet::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("gateway_") {
        let start = from + pos;
        let mut end = start + "gateway_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        from = end;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !starts_word {
            continue;
        }
        let mut name = text[start..end].trim_end_matches('_');
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
                break;
            }
        }
        if name.len() > "gateway_".len() {
            names.insert(name.to_string());
        }
    }
    names
}

//! The Prometheus text exposition format as Ferry's processes write it on
//! their admin ports: a strict parser (it refuses what Prometheus would
//! refuse) and the queries `ferryctl` needs: sums over labels, and
//! quantiles from histogram buckets.

use std::collections::HashMap;

/// What a metric family measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
    /// Quantiles, sum and count.
    Summary,
    /// No `# TYPE` line.
    Untyped,
}

/// Label names and values, in order.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (a histogram's carry `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Its labels, in order.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if it has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it has every label of `wanted` with that value.
    pub fn matches(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// One metric family: its `# HELP`, `# TYPE` and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The family name.
    pub name: String,
    /// Its help text, if given.
    pub help: Option<String>,
    /// Its type.
    pub kind: Kind,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Families in the order they appeared.
    pub families: Vec<Family>,
}

impl Exposition {
    /// Parses `text`, refusing anything malformed with the line it is on.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut families: Vec<Family> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        for (number, line) in text.lines().enumerate() {
            let at = |message: String| format!("line {}: {message}: {line}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_name(name).map_err(at)?;
                let family = family_slot(&mut families, &mut index, name);
                if families[family].help.is_some() {
                    return Err(at(format!("a second HELP for {name}")));
                }
                families[family].help = Some(unescape_help(help));
                current = Some(family);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without a type".into()))?;
                check_name(name).map_err(at)?;
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    "summary" => Kind::Summary,
                    "untyped" => Kind::Untyped,
                    other => return Err(at(format!("unknown type '{other}'"))),
                };
                let family = family_slot(&mut families, &mut index, name);
                if !families[family].samples.is_empty() {
                    return Err(at(format!("TYPE for {name} after its samples")));
                }
                families[family].kind = kind;
                current = Some(family);
                continue;
            }
            if line.starts_with('#') {
                continue; // a comment
            }
            let sample = parse_sample(line).map_err(at)?;
            let family = match current.filter(|&f| belongs(&families[f], &sample.name)) {
                Some(family) => family,
                None => {
                    if index.contains_key(&sample.name) {
                        return Err(at(format!("samples of {} are not together", sample.name)));
                    }
                    family_slot(&mut families, &mut index, &sample.name.clone())
                }
            };
            families[family].samples.push(sample);
            current = Some(family);
        }
        for family in &families {
            if family.kind == Kind::Histogram {
                check_histogram(family)?;
            }
        }
        Ok(Self { families })
    }

    /// Families missing their `# HELP` or `# TYPE` line, by name.
    pub fn undescribed(&self) -> Vec<&str> {
        self.families
            .iter()
            .filter(|f| f.help.is_none() || f.kind == Kind::Untyped)
            .map(|f| f.name.as_str())
            .collect()
    }

    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The sum of the samples named `name` that carry every label of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name && s.matches(labels))
            .map(|s| s.value)
            .sum()
    }

    /// Cumulative bucket counts of histogram `name` over samples with
    /// `labels`, summed across the rest: (upper bound, count) in order.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_bound: Vec<(f64, f64)> = Vec::new();
        for sample in self
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == bucket && s.matches(labels))
        {
            let Some(bound) = sample.label("le").and_then(parse_value) else {
                continue;
            };
            match by_bound.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += sample.value,
                None => by_bound.push((bound, sample.value)),
            }
        }
        by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
        by_bound
    }
}

/// The `q` quantile of cumulative `buckets` (as [`Exposition::buckets`]
/// returns them), interpolated linearly inside the bucket it falls in, as
/// Prometheus's `histogram_quantile` does; `None` with no observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut below = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(below.0); // beyond the last finite bound
            }
            let inside = count - below.1;
            let fraction = if inside > 0.0 {
                (rank - below.1) / inside
            } else {
                1.0
            };
            return Some(below.0 + (bound - below.0) * fraction);
        }
        below = (bound, count);
    }
    Some(below.0)
}

fn family_slot(
    families: &mut Vec<Family>,
    index: &mut HashMap<String, usize>,
    name: &str,
) -> usize {
    *index.entry(name.to_owned()).or_insert_with(|| {
        families.push(Family {
            name: name.to_owned(),
            help: None,
            kind: Kind::Untyped,
            samples: Vec::new(),
        });
        families.len() - 1
    })
}

/// Whether a sample called `name` is one of `family`'s.
fn belongs(family: &Family, name: &str) -> bool {
    match family.kind {
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(family.name.as_str())),
        Kind::Summary => {
            name == family.name
                || ["_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family.name.as_str()))
        }
        _ => name == family.name,
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if valid {
        Ok(())
    } else {
        Err(format!("'{name}' is not a metric name"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "a sample without a value".to_owned())?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after)?;
        labels = parsed;
        rest = remainder;
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .and_then(parse_value)
        .ok_or_else(|| "the value is not a number".to_owned())?;
    if let Some(timestamp) = fields.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err("the timestamp is not an integer".into());
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels up to the closing brace, and what follows it.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, after) = text
            .split_once('=')
            .ok_or_else(|| "a label without '='".to_owned())?;
        let name = name.trim();
        check_name(name).map_err(|_| format!("'{name}' is not a label name"))?;
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label '{name}' twice"));
        }
        let mut chars = after
            .strip_prefix('"')
            .ok_or_else(|| format!("label '{name}' is not quoted"))?
            .char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("a bad escape in label '{name}'")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("label '{name}' is not closed")),
            }
        };
        labels.push((name.to_owned(), value));
        text = after[1 + end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn unescape_help(text: &str) -> String {
    text.replace("\\n", "\n").replace("\\\\", "\\")
}

/// Every label set of a histogram has non-decreasing buckets ending in
/// `+Inf`, equal to its `_count`.
fn check_histogram(family: &Family) -> Result<(), String> {
    let bucket = format!("{}_bucket", family.name);
    let count = format!("{}_count", family.name);
    let key = |sample: &Sample| -> Labels {
        sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect()
    };
    let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
    for sample in family.samples.iter().filter(|s| s.name == bucket) {
        let bound = sample
            .label("le")
            .and_then(parse_value)
            .ok_or_else(|| format!("{bucket} without a numeric le"))?;
        series
            .entry(key(sample))
            .or_default()
            .push((bound, sample.value));
    }
    for (labels, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{} {labels:?}: buckets decrease", family.name));
        }
        let Some(&(last, infinite)) = buckets.last() else {
            continue;
        };
        if !last.is_infinite() {
            return Err(format!("{} {labels:?}: no +Inf bucket", family.name));
        }
        let total = family
            .samples
            .iter()
            .find(|s| s.name == count && key(s) == labels)
            .map(|s| s.value);
        if total != Some(infinite) {
            return Err(format!(
                "{} {labels:?}: +Inf bucket {infinite} but count {total:?}",
                family.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP request_total Requests.\n# TYPE request_total counter\n\
        request_total{dataset=\"a\",direction=\"outbound\"} 3\nrequest_total{dataset=\"b\",direction=\"outbound\"} 4\n\
        # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
        lat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"0.2\"} 3\nlat_seconds_bucket{le=\"+Inf\"} 4\n\
        lat_seconds_sum 0.5\nlat_seconds_count 4\n";

    #[test]
    fn sums_and_quantiles() {
        let parsed = Exposition::parse(TEXT).expect("valid");
        assert_eq!(parsed.sum("request_total", &[]), 7.0);
        assert_eq!(parsed.sum("request_total", &[("dataset", "b")]), 4.0);
        assert_eq!(
            parsed
                .family("request_total")
                .and_then(|f| f.help.as_deref()),
            Some("Requests.")
        );
        let buckets = parsed.buckets("lat_seconds", &[]);
        let median = quantile(&buckets, 0.5).expect("a median");
        assert!((median - 0.15).abs() < 1e-9, "{median}");
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn families_without_help_or_type_are_named() {
        let parsed = Exposition::parse(
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
             # TYPE b_total counter\nb_total 1\n\
             # HELP c A gauge.\nc 2\n",
        )
        .expect("valid");
        assert_eq!(parsed.undescribed(), ["b_total", "c"]);
    }

    #[test]
    fn malformed_text_is_refused_with_its_line() {
        for (bad, why) in [
            ("request_total{dataset=\"a} 1\n", "not closed"),
            ("request_total 1 2 3\n", "after the timestamp"),
            ("9bad 1\n", "not a metric name"),
            ("x{a=\"1\",a=\"2\"} 1\n", "twice"),
            ("x one\n", "not a number"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "decrease",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
                "count",
            ),
            ("a 1\nb 2\na 3\n", "not together"),
        ] {
            let err = Exposition::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}

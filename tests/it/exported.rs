//! What the shipped Prometheus rules and Grafana dashboard read, checked against what a run
//! exports: every `stratus_*` series a query names exists, with every label the query groups
//! by or matches on, and every label value it matches exactly.

use std::collections::{BTreeSet, HashMap};

type Labels = HashMap<String, String>;

/// The series of a Prometheus text exposition: metric name → each series' labels.
fn series(text: &str) -> HashMap<String, Vec<Labels>> {
    let mut out: HashMap<String, Vec<Labels>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut labels = Labels::new();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').unwrap();
            for (k, _, v) in matchers(&line[name_end + 1..close]) {
                labels.insert(k, v);
            }
        }
        out.entry(line[..name_end].to_string())
            .or_default()
            .push(labels);
    }
    out
}

/// `label op "value"` items of a `{…}` block: (label, op, value).
fn matchers(block: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = block.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).unwrap();
        let label = rest[..op_at].trim().to_string();
        let op_len = if rest[op_at..].starts_with("=~")
            || rest[op_at..].starts_with("!=")
            || rest[op_at..].starts_with("!~")
        {
            2
        } else {
            1
        };
        let op = rest[op_at..op_at + op_len].to_string();
        let after = rest[op_at + op_len..].trim_start();
        assert!(after.starts_with('"'), "unquoted value in {block:?}");
        let mut value = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = i + 2;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((label, op, value));
        rest = after[end..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// One metric a query reads: the labels it needs and the values it matches exactly.
#[derive(Debug, Default)]
struct Need {
    labels: BTreeSet<String>,
    equal: Vec<(String, String)>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The end (exclusive) of the parenthesised expression opening at `open`.
fn matching(expr: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in expr[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return open + i + 1;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {expr}")
}

/// The `stratus_*` metrics `expr` reads, each with what it needs.
fn needs(expr: &str) -> HashMap<String, Need> {
    let expr = expr.replace("$__rate_interval", "5m");
    let mut out: HashMap<String, Need> = HashMap::new();
    let mut at = 0;
    while let Some(found) = expr[at..].find("stratus_") {
        let start = at + found;
        let end = start
            + expr[start..]
                .find(|c| !is_name_char(c))
                .unwrap_or(expr.len() - start);
        let need = out.entry(expr[start..end].to_string()).or_default();
        if expr[end..].starts_with('{') {
            let close = end + expr[end..].find('}').unwrap();
            for (label, op, value) in matchers(&expr[end + 1..close]) {
                if op == "=" {
                    need.equal.push((label.clone(), value));
                }
                need.labels.insert(label);
            }
        }
        at = end;
    }
    // `by (labels) (argument)`: every metric in the argument carries the labels.
    let mut at = 0;
    while let Some(found) = expr[at..].find("by (") {
        let list_start = at + found + 4;
        let list_end = list_start + expr[list_start..].find(')').unwrap();
        let labels: Vec<String> = expr[list_start..list_end]
            .split(',')
            .map(|l| l.trim().to_string())
            .collect();
        let open = list_end + 1 + expr[list_end + 1..].find('(').unwrap();
        let argument = &expr[open..matching(&expr, open)];
        for (metric, need) in out.iter_mut() {
            if argument.contains(metric.as_str()) {
                need.labels.extend(labels.iter().cloned());
            }
        }
        at = list_end;
    }
    out
}

/// Every query of the shipped rules and dashboard, with where it comes from.
fn shipped_queries() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/prometheus/stratus-rules.yml")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            queries.push((
                format!("rule {name}"),
                rule["expr"].as_str().unwrap().into(),
            ));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/stratus.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap();
            queries.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().into(),
            ));
        }
    }
    queries
}

/// The sum of `metric` over the series of `scraped` whose labels include `matching`.
pub fn sum(scraped: &str, metric: &str, matching: &[(&str, &str)]) -> f64 {
    scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .filter(|l| {
            let labels = l.find('{').map_or(Labels::new(), |open| {
                let close = l.rfind('}').unwrap();
                matchers(&l[open + 1..close])
                    .into_iter()
                    .map(|(k, _, v)| (k, v))
                    .collect()
            });
            matching
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Fails with every query that reads a series `scraped` lacks, and how.
pub fn assert_rules_and_dashboard_read_what_is_exported(scraped: &str) {
    let exported = series(scraped);
    let queries = shipped_queries();
    assert!(queries.len() > 20, "{} queries found", queries.len());
    let mut missing = Vec::new();
    let mut checked = 0;
    for (origin, expr) in &queries {
        for (metric, need) in needs(expr) {
            checked += 1;
            let Some(all) = exported.get(&metric) else {
                missing.push(format!("{origin}: {metric} is not exported"));
                continue;
            };
            for label in &need.labels {
                if !all.iter().all(|s| s.contains_key(label)) {
                    missing.push(format!("{origin}: {metric} lacks label {label}"));
                }
            }
            for (label, value) in &need.equal {
                if !all.iter().any(|s| s.get(label) == Some(value)) {
                    missing.push(format!("{origin}: no {metric} has {label}={value:?}"));
                }
            }
        }
    }
    assert!(checked > 25, "only {checked} metric reads found");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn queries_are_read_for_their_metrics_labels_and_values() {
    let n = needs(
        r#"(time() - max by (pipeline, sink) (stratus_a{x="1"}) > 9) and on (pipeline) (sum by (pipeline) (rate(stratus_b[$__rate_interval])) > 0)"#,
    );
    assert_eq!(
        n["stratus_a"].labels,
        BTreeSet::from(["pipeline".into(), "sink".into(), "x".into()])
    );
    assert_eq!(n["stratus_a"].equal, [("x".to_string(), "1".to_string())]);
    assert_eq!(n["stratus_b"].labels, BTreeSet::from(["pipeline".into()]));
    let s = series("# HELP x\nstratus_a{pipeline=\"p\",problem=\"sink raw\"} 1\nstratus_c 2\n");
    assert_eq!(s["stratus_a"][0]["problem"], "sink raw");
    assert!(s["stratus_c"][0].is_empty());
    // The check fails on a series nobody exports.
    let failed = std::panic::catch_unwind(|| assert_rules_and_dashboard_read_what_is_exported(""));
    assert!(failed.is_err());
}

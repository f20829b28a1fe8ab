//! Tables from the results file: one per scenario and case with a column per server, the
//! ratios oriented so that more than 1 means wsd is better, and the targets.

use std::fmt::Write as _;

use serde_json::Value;

/// Column order; any other target name follows these.
const COLUMNS: [&str; 4] = ["wsd", "websocketd", "websocat", "ceiling"];

/// The target for a metric: the least ratio wsd/websocketd (oriented) and how it was stated.
pub fn target(scenario: &str, key: &str) -> Option<(f64, &'static str)> {
    Some(match (scenario, key) {
        ("churn", "conn_per_s") => (1.35, ">=1.35x"),
        ("churn", "server_cpu_us_per_conn") => (3.0, "<=1/3 cpu"),
        ("echo", "rtt_p50_us" | "rtt_p99_us") => (1.0 / 0.7, "<=0.7x"),
        ("pipeline", "msgs_per_s" | "mb_per_s") => (3.0, ">=3x"),
        ("flood", "msgs_per_s" | "mb_per_s") => (5.0, ">=5x"),
        ("idle", "server_rss_kib_per_conn") => (4.0, "<=1/4 rss"),
        _ => return None,
    })
}

/// wsd's advantage over `other`: above 1 means wsd is better, whichever way the metric points.
pub fn advantage(better: &str, wsd: f64, other: f64) -> f64 {
    match better {
        "higher" => wsd / other,
        "lower" => other / wsd,
        _ => f64::NAN,
    }
}

pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(v: f64) -> String {
    if v.is_finite() && v > 0.0 {
        format!("{v:.2}x")
    } else {
        "-".into()
    }
}

/// The median of `key` for `target` in a group, if measured.
fn median_of(group: &[&Value], target: &str, key: &str) -> Option<f64> {
    group
        .iter()
        .find(|r| r["target"] == target)?
        .get("metrics")?
        .as_array()?
        .iter()
        .find(|m| m["key"] == key)?["median"]
        .as_f64()
}

/// Records grouped by (scenario, case), in the order they first appear.
pub fn groups(records: &[Value]) -> Vec<Vec<&Value>> {
    let mut out: Vec<Vec<&Value>> = Vec::new();
    for r in records {
        match out
            .iter_mut()
            .find(|g| g[0]["scenario"] == r["scenario"] && g[0]["case"] == r["case"])
        {
            Some(g) => g.push(r),
            None => out.push(vec![r]),
        }
    }
    out
}

fn columns(group: &[&Value]) -> Vec<String> {
    let mut names: Vec<String> = group
        .iter()
        .filter_map(|r| r["target"].as_str().map(str::to_owned))
        .collect();
    names.dedup();
    let rank = |n: &String| COLUMNS.iter().position(|c| c == n).unwrap_or(COLUMNS.len());
    names.sort_by_key(rank);
    names
}

/// One scenario case as a table.
pub fn table(group: &[&Value]) -> String {
    let scenario = group[0]["scenario"].as_str().unwrap_or("?");
    let case = group[0]["case"].as_str().unwrap_or("?");
    let slices = group
        .iter()
        .filter_map(|r| r["slices"].as_u64())
        .max()
        .unwrap_or(0);
    let cols = columns(group);
    let has_wsd = cols.iter().any(|c| c == "wsd");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{scenario}: {case}  (median of {slices} slice{})",
        if slices == 1 { "" } else { "s" }
    );
    // Metric rows in the order the first record lists them.
    let Some(metrics) = group[0]["metrics"].as_array() else {
        return out;
    };
    let label_of = |m: &Value| {
        let label = m["label"].as_str().unwrap_or("?");
        match m["unit"].as_str().unwrap_or("") {
            "" => label.to_owned(),
            unit => format!("{label} ({unit})"),
        }
    };
    let width = metrics.iter().map(|m| label_of(m).len()).max().unwrap_or(0);
    let mut header = format!("  {:<width$}", "metric");
    for c in &cols {
        let _ = write!(header, "{c:>11}");
    }
    if has_wsd {
        let _ = write!(
            header,
            "{:>14}{:>13}{:>11}  target",
            "vs websocketd", "vs websocat", "of ceiling"
        );
    }
    let _ = writeln!(out, "{header}");
    for m in metrics {
        let key = m["key"].as_str().unwrap_or("");
        let better = m["better"].as_str().unwrap_or("");
        let mut line = format!("  {:<width$}", label_of(m));
        for c in &cols {
            let v = median_of(group, c, key).unwrap_or(f64::NAN);
            let _ = write!(line, "{:>11}", num(v));
        }
        if has_wsd {
            let wsd = median_of(group, "wsd", key).unwrap_or(f64::NAN);
            let vs = |other: &str| {
                let o = median_of(group, other, key).unwrap_or(f64::NAN);
                advantage(better, wsd, o)
            };
            let ceiling = vs("ceiling");
            let of_ceiling = if ceiling.is_finite() && ceiling > 0.0 {
                format!("{:.0}%", 100.0 * ceiling)
            } else {
                "-".into()
            };
            let verdict = if better == "zero" {
                if wsd == 0.0 { "0: ok" } else { "0: FAIL" }.to_owned()
            } else if let Some((least, text)) = target(scenario, key) {
                let met = vs("websocketd") >= least;
                format!("{text} {}", if met { "ok" } else { "MISS" })
            } else {
                String::new()
            };
            let _ = write!(
                line,
                "{:>14}{:>13}{:>11}  {}",
                ratio(vs("websocketd")),
                ratio(vs("websocat")),
                of_ceiling,
                verdict
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The targets in one list: wsd against websocketd (the target) and websocat (to be
/// ahead of), and the soak's leak counts.
pub fn summary(records: &[Value]) -> (String, Vec<Value>) {
    let mut lines: Vec<[String; 6]> = Vec::new();
    let mut rows = Vec::new();
    for g in groups(records) {
        let scenario = g[0]["scenario"].as_str().unwrap_or("?");
        let case = g[0]["case"].as_str().unwrap_or("?");
        let Some(metrics) = g[0]["metrics"].as_array() else {
            continue;
        };
        for m in metrics {
            let key = m["key"].as_str().unwrap_or("");
            let better = m["better"].as_str().unwrap_or("");
            let label = m["label"].as_str().unwrap_or(key);
            let name = format!("{scenario} {case}: {label}");
            let wsd = median_of(&g, "wsd", key).unwrap_or(f64::NAN);
            if scenario == "soak" && better == "zero" {
                let ok = wsd == 0.0;
                lines.push([
                    name,
                    "0".into(),
                    num(wsd),
                    if ok { "ok" } else { "FAIL" }.into(),
                    String::new(),
                    String::new(),
                ]);
                rows.push(serde_json::json!({
                    "scenario": scenario, "case": case, "metric": key,
                    "target": 0, "wsd": wsd, "met": ok,
                }));
                continue;
            }
            let Some((least, text)) = target(scenario, key) else {
                continue;
            };
            let vd = advantage(
                better,
                wsd,
                median_of(&g, "websocketd", key).unwrap_or(f64::NAN),
            );
            let vc = advantage(
                better,
                wsd,
                median_of(&g, "websocat", key).unwrap_or(f64::NAN),
            );
            let met = vd >= least;
            let ahead = vc > 1.0;
            lines.push([
                name,
                text.into(),
                ratio(vd),
                if met { "ok" } else { "MISS" }.into(),
                ratio(vc),
                if ahead { "ahead" } else { "BEHIND" }.into(),
            ]);
            rows.push(serde_json::json!({
                "scenario": scenario, "case": case, "metric": key, "target": text,
                "least_ratio": least, "vs_websocketd": vd, "met": met,
                "vs_websocat": vc, "ahead_of_websocat": ahead,
            }));
        }
    }
    let width = lines.iter().map(|l| l[0].len()).max().unwrap_or(0).max(20);
    let mut out = String::from("\nTargets (ratios are wsd's advantage: >1 means wsd is better)\n");
    let _ = writeln!(
        out,
        "  {:<width$}{:>11}{:>14}{:>6}{:>13}{:>8}",
        "scenario / metric", "target", "vs websocketd", "", "vs websocat", ""
    );
    for [name, target, vd, met, vc, ahead] in lines {
        let line = format!("  {name:<width$}{target:>11}{vd:>14}{met:>6}{vc:>13}{ahead:>8}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    (out, rows)
}

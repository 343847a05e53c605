//! The alerting rules shipped in `deploy/`: valid, each alert's unit tests passing under
//! Prometheus' own promtool, and the PrometheusRule holding exactly the rules file's groups.

use std::{path::PathBuf, process::Command};

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().expect(
        "promtool is required (cargo xtask test installs Debian's prometheus, which has it)",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerting_rules_are_valid_and_every_alert_passes_its_unit_tests() {
    let rules = deploy("alerts.yml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 4 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", deploy("alerts-test.yml").to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert of the file has a test that expects it to fire.
    let tests = std::fs::read_to_string(deploy("alerts-test.yml")).unwrap();
    for alert in std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test in alerts-test.yml"
        );
    }
}

#[test]
fn the_prometheus_rule_holds_exactly_the_rules_files_groups() {
    let read = |name: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(deploy(name)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let rules = read("alerts.yml");
    let crd = read("prometheus-rule.yaml");
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"], rules,
        "prometheus-rule.yaml's spec differs from alerts.yml"
    );
}

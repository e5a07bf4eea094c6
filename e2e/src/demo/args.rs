//! The `uplink-e2e demo` command line.

use std::path::PathBuf;
use std::time::Duration;

/// `uplink-e2e demo`: KCP, clusters, the hub and one agent per cluster on
/// this machine; the demo writes Deployments to KCP and shows them carried down
/// to their clusters and their status carried back.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Physical clusters to simulate (one embedded API server and one agent each).
    #[arg(
        long,
        env = "UPLINK_DEMO_CLUSTERS",
        default_value_t = 3,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub clusters: u16,

    /// How long to drive the workloads before the final check (`20s`, `2m`, `1m30s`).
    #[arg(long, env = "UPLINK_DEMO_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long each Deployment rests between two steps of its story (a
    /// write to KCP, then everything it causes seen), so the table can be read.
    #[arg(
        long,
        env = "UPLINK_DEMO_STEP_PAUSE",
        default_value = "3s",
        value_parser = parse_duration
    )]
    pub step_pause: Duration,

    /// How often the agents send heartbeats (short, for a lively table).
    #[arg(
        long,
        env = "UPLINK_DEMO_HEARTBEAT_INTERVAL",
        default_value = "1s",
        value_parser = parse_duration
    )]
    pub heartbeat_interval: Duration,

    /// The `uplink-hub` binary; by default it is built and taken from beside this executable.
    #[arg(long, env = "UPLINK_DEMO_HUB_BIN")]
    pub hub_bin: Option<PathBuf>,

    /// The `uplink-agent` binary; by default it is built and taken from beside this executable.
    #[arg(long, env = "UPLINK_DEMO_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,

    /// Keep the demo directory (certificates, kubeconfigs, logs) after exiting.
    #[arg(long, env = "UPLINK_DEMO_KEEP_DIR")]
    pub keep_dir: bool,

    /// Where to write certificates, kubeconfigs and logs (created if
    /// missing, files in it overwritten, kept at exit), so the kubeconfigs
    /// have paths known in advance. Default: `$TMPDIR/uplink-demo-<pid>`,
    /// removed at exit unless `--keep-dir`.
    #[arg(long, env = "UPLINK_DEMO_DIR")]
    pub dir: Option<PathBuf>,

    /// Open the hub's operator page (its URL is printed either way) in a
    /// browser: `$BROWSER`, else `xdg-open` or `open`, where one exists.
    #[arg(long, env = "UPLINK_DEMO_OPEN")]
    pub open: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            clusters: 3,
            duration: Duration::from_secs(30),
            step_pause: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            hub_bin: None,
            agent_bin: None,
            keep_dir: false,
            dir: None,
            open: false,
        }
    }
}

/// Parses `500ms`, `20s`, `2m`, `1h`, `1m30s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number before {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => {
                return Err(format!(
                    "{text:?}: a unit (ms, s, m, h) must follow {number}"
                ));
            }
            unit => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
                ));
            }
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_durations_parse() {
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("20s"), Ok(secs(20)));
        assert_eq!(parse_duration("2m"), Ok(secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(secs(90)));
        assert_eq!(parse_duration("1h"), Ok(secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Ok(secs(45)));
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for bad in ["", "s", "10x", "1m30", "-5s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("10x").is_err_and(|e| e.contains("unknown unit")));
    }

    #[test]
    fn defaults_match_the_flags() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            demo: DemoArgs,
        }
        let parsed = Cli::parse_from(["demo"]).demo;
        let default = DemoArgs::default();
        assert_eq!(parsed.clusters, default.clusters);
        assert_eq!(parsed.duration, default.duration);
        assert_eq!(parsed.heartbeat_interval, default.heartbeat_interval);
        assert_eq!(parsed.step_pause, default.step_pause);
        assert_eq!(parsed.dir, None);
        assert!(!parsed.keep_dir);
        assert!(!parsed.open);
    }
}

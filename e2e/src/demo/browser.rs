//! `uplink-e2e demo --open`: the hub's operator page in the user's browser.
//!
//! The browser is the user's program, not one of the demo's children: it
//! is started the way desktop tools start one (`$BROWSER`, else the
//! platform's opener) and outlives the demo. Only the opener process is
//! ours, and it is reaped once it exits.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

/// The page's address on the hub's HTTP listener.
pub fn page_url(hub_http: SocketAddr) -> String {
    format!("http://{hub_http}/ui/")
}

/// Openers to try, in order: `$BROWSER` (a `:`-separated list of commands,
/// `%s` standing for the URL, as `xdg-open` and Python's `webbrowser` read
/// it), then the platform's opener (`xdg-open`; `open` on macOS only: on
/// Debian `open` is `openvt`).
fn openers() -> Vec<OsString> {
    let mut openers: Vec<OsString> = std::env::var_os("BROWSER")
        .map(|list| {
            list.to_string_lossy()
                .split(':')
                .filter(|b| !b.is_empty())
                .map(OsString::from)
                .collect()
        })
        .unwrap_or_default();
    openers.push(OsString::from(if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    }));
    openers
}

/// How long an opener may take to say it failed; one still running then is
/// a browser started directly, which is success.
const OPENER_VERDICT: Duration = Duration::from_secs(2);

/// Starts the first opener that works with `url`; returns its name, or why
/// none did.
pub async fn open(url: &str) -> Result<String, String> {
    open_with(openers(), url).await
}

async fn open_with(openers: Vec<OsString>, url: &str) -> Result<String, String> {
    let mut tried = Vec::new();
    for opener in openers {
        let name = opener.to_string_lossy().into_owned();
        // `%s` is where the URL goes; without it, the URL is the argument.
        let (program, args) = match name.split_once(' ') {
            Some((program, rest)) if rest.contains("%s") => (
                program.to_owned(),
                rest.split(' ').map(|a| a.replace("%s", url)).collect(),
            ),
            _ => (name.clone(), vec![url.to_owned()]),
        };
        let spawned = tokio::process::Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C of the demo does not reach a
            // browser started directly.
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                tried.push(format!("{name}: {error}"));
                continue;
            }
        };
        match tokio::time::timeout(OPENER_VERDICT, child.wait()).await {
            Ok(Ok(status)) if status.success() => return Ok(name),
            Ok(Ok(status)) => tried.push(format!("{name}: {status}")),
            Ok(Err(error)) => tried.push(format!("{name}: {error}")),
            Err(_) => {
                // Still running: a browser. Reap it whenever it exits.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                return Ok(name);
            }
        }
    }
    Err(format!(
        "no browser could be started ({})",
        tried.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_under_ui_on_the_hub_listener() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8081));
        assert_eq!(page_url(addr), "http://127.0.0.1:8081/ui/");
    }

    #[tokio::test]
    async fn the_first_opener_that_works_is_used_and_the_others_are_named() {
        let url = "http://127.0.0.1:1/ui/";
        let missing = OsString::from("uplink-no-such-opener");
        let failing = OsString::from("false");
        let Err(why) = open_with(vec![missing.clone(), failing.clone()], url).await else {
            panic!("no opener worked, yet one was reported");
        };
        assert!(
            why.contains("uplink-no-such-opener") && why.contains("false"),
            "{why}"
        );
        // `true` stands in for a browser: it takes the URL and exits 0.
        let opened = open_with(vec![missing, failing, OsString::from("true")], url).await;
        assert_eq!(opened, Ok("true".to_owned()));
        // `%s` places the URL: `test URL = URL` exits 0 only if it did.
        let placed = format!("test %s = {url}");
        assert_eq!(
            open_with(vec![OsString::from(&placed)], url).await,
            Ok(placed)
        );
    }
}

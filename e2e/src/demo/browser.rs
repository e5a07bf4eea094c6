//! `uplink-e2e demo --open`: the hub's operator page in the user's browser.
//!
//! The browser is the user's program, not one of the demo's children: it
//! is started the way desktop tools start one (`$BROWSER`, else the
//! platform's opener) and outlives the demo. Only the opener process is
//! ours, and it is reaped once it exits.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Stdio;

/// The page's address on the hub's HTTP listener.
pub fn page_url(hub_http: SocketAddr) -> String {
    format!("http://{hub_http}/ui/")
}

/// Openers to try, in order: `$BROWSER` (a command, as `xdg-open` and
/// Python's `webbrowser` read it), then the platform's.
fn openers() -> Vec<OsString> {
    let mut openers: Vec<OsString> = std::env::var_os("BROWSER")
        .filter(|b| !b.is_empty())
        .into_iter()
        .collect();
    openers.extend(["xdg-open", "open"].map(OsString::from));
    openers
}

/// Starts the first opener that exists with `url`; returns its name, or why
/// none could be started.
pub fn open(url: &str) -> Result<String, String> {
    open_with(openers(), url)
}

fn open_with(openers: Vec<OsString>, url: &str) -> Result<String, String> {
    let mut tried = Vec::new();
    for opener in openers {
        let spawned = tokio::process::Command::new(&opener)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                // The opener hands the URL to a browser and exits; reap it.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
                return Ok(opener.to_string_lossy().into_owned());
            }
            Err(error) => tried.push(format!("{}: {error}", opener.to_string_lossy())),
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
    async fn the_first_opener_that_starts_is_used_and_a_missing_one_is_named() {
        let url = "http://127.0.0.1:1/ui/";
        let missing = OsString::from("uplink-no-such-opener");
        let Err(why) = open_with(vec![missing.clone()], url) else {
            panic!("a missing opener started");
        };
        assert!(why.contains("uplink-no-such-opener"), "{why}");
        // `true` stands in for a browser: it starts, takes the URL, exits.
        let opened = open_with(vec![missing, OsString::from("true")], url);
        assert_eq!(opened, Ok("true".to_owned()));
    }
}

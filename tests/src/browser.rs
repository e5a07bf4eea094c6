//! A headless Chromium driven over the Chrome DevTools Protocol, for tests
//! of the hub's operator page in a real browser.
//!
//! CDP is JSON over one WebSocket, so the driver is small: [`Browser::launch`]
//! starts Chromium with a fresh profile and a debugging port of its own
//! choosing (read back from `DevToolsActivePort`), one reader task routes
//! answers to callers by message id and events to pages by session id, and
//! each [`Page`] is a target attached in flat mode (its commands carry its
//! session id). Every wait has a deadline, and every error names the command
//! or the condition it was waiting for.
//!
//! Chromium runs in a process group of its own, killed on drop with its
//! renderers; the reader task is aborted on drop. Where no Chromium is
//! installed, [`Browser::launch`] says so on stderr and returns `None`, and
//! the test skips itself with that message.
//!
//! ```ignore
//! let Some(browser) = Browser::launch().await? else { return Ok(()) };
//! let page = browser.new_page().await?;
//! page.goto("http://127.0.0.1:8080/ui/").await?;
//! page.wait_for("document.querySelector('table#fleet')", DEADLINE, "the fleet table").await?;
//! page.screenshot(&screenshots_dir(env!("CARGO_TARGET_TMPDIR"))?.join("fleet.png"), true).await?;
//! browser.close().await?;
//! ```

use std::{
    collections::HashMap,
    env,
    ffi::OsString,
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use futures::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{
    net::TcpStream,
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::fleet::eventually;

/// Environment variable naming the Chromium binary to use.
pub const CHROMIUM_ENV: &str = "UPLINK_CHROMIUM";
/// Binaries looked for on `PATH` when [`CHROMIUM_ENV`] is not set.
const CHROMIUM_NAMES: &[&str] = &["chromium", "chromium-browser", "google-chrome"];

/// How long Chromium may take to start and write its debugging port.
/// Generous: the test machine may be busy compiling.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may wait for its answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a navigation may take to load its document.
const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Chromium may take to exit after `Browser.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// JavaScript errors kept per page ([`Page::errors`]); later ones are dropped.
const MAX_ERRORS: usize = 100;

/// Flags for a headless Chromium that needs no network beyond loopback and
/// keeps nothing between runs. `--no-sandbox` because CI runs as root.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--password-store=basic",
    "--remote-debugging-port=0",
];

type Socket = WebSocketStream<TcpStream>;

/// A running headless Chromium and the DevTools connection to it.
pub struct Browser {
    child: Child,
    /// Chromium's process group (its own pid): renderers and helpers too.
    group: Option<rustix::process::Pid>,
    /// Set once `child` has been waited for: its group id may be reused.
    reaped: bool,
    connection: Arc<Connection>,
    reader: JoinHandle<()>,
    version: String,
    /// The profile and Chromium's log; removed on drop.
    dir: TempDir,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .field("version", &self.version)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts a headless Chromium ([`CHROMIUM_ENV`], else the first of
    /// `chromium`, `chromium-browser`, `google-chrome` on `PATH`) and
    /// connects to it. `Ok(None)`, after a line on stderr saying so, when
    /// there is no Chromium; an error when there is one that does not start.
    pub async fn launch() -> Result<Option<Browser>> {
        let Some(binary) = find_chromium()? else {
            say(&format!(
                "skipped: no Chromium found (install Debian's chromium, or set {CHROMIUM_ENV})"
            ));
            return Ok(None);
        };
        Self::launch_binary(&binary).await.map(Some)
    }

    /// Starts `binary` as a headless Chromium and connects to it.
    pub async fn launch_binary(binary: &Path) -> Result<Browser> {
        let dir = tempfile::Builder::new()
            .prefix("uplink-chromium-")
            .tempdir()
            .context("creating a directory for Chromium's profile")?;
        let profile = dir.path().join("profile");
        let log_path = dir.path().join("chromium.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut user_data_dir = OsString::from("--user-data-dir=");
        user_data_dir.push(&profile);
        let child = Command::new(binary)
            .args(CHROMIUM_FLAGS)
            .arg(user_data_dir)
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("sharing Chromium's log file")?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let group = child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
        let mut launching = Launching {
            child,
            group,
            log_path,
        };
        let socket = launching.connect(&profile).await?;
        let Launching { child, group, .. } = launching;

        let (sink, stream) = socket.split();
        let connection = Arc::new(Connection::new(sink));
        let reader = tokio::spawn(read(stream, Arc::clone(&connection)));
        let mut browser = Browser {
            child,
            group,
            reaped: false,
            connection,
            reader,
            version: String::new(),
            dir,
        };
        let version = browser
            .connection
            .call(None, "Browser.getVersion", json!({}))
            .await?;
        browser.version = version["product"].as_str().unwrap_or("?").to_owned();
        Ok(browser)
    }

    /// Chromium's product and version, e.g. `Chrome/148.0.7778.167`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Opens a new tab on `about:blank`, with runtime events (uncaught
    /// exceptions, `console.error`) recorded for [`Page::errors`].
    pub async fn new_page(&self) -> Result<Page> {
        let conn = &self.connection;
        let target = conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("Target.createTarget answered without a targetId: {target}"))?
            .to_owned();
        let attached = conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| {
                anyhow!("Target.attachToTarget answered without a sessionId: {attached}")
            })?
            .to_owned();
        let errors = Arc::new(Mutex::new(Vec::new()));
        lock(&conn.sessions).insert(session.clone(), Arc::clone(&errors));
        let page = Page {
            connection: Arc::clone(conn),
            session,
            target_id,
            errors,
        };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        // Failed loads and Content-Security-Policy refusals come as log
        // entries, not exceptions.
        page.call("Log.enable", json!({})).await?;
        Ok(page)
    }

    /// Asks Chromium to exit and waits for it (killing its process group
    /// when it does not go within a few seconds).
    pub async fn close(mut self) -> Result<()> {
        // Chromium may exit before it answers; its exit is what counts.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            self.connection.call(None, "Browser.close", json!({})),
        )
        .await;
        // Its helpers (renderers, the zygote) may outlive the main process:
        // the whole group goes, before the leader is reaped (until then the
        // group's id cannot be reused, so this reaches Chromium's only).
        let exited = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                match self.child.try_wait() {
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ => return,
                }
            }
        })
        .await;
        let _ = exited;
        self.kill_group();
        let status = self.child.wait().await;
        // Reaped: the group's id is no longer ours to signal.
        self.reaped = true;
        status.context("waiting for Chromium to exit")?;
        Ok(())
    }

    fn kill_group(&self) {
        if let Some(group) = self.group {
            // ESRCH (all gone already) is the only expected failure.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        self.connection.close("the browser was dropped");
        // Until the leader is reaped its pid, the group's id, cannot be
        // reused, so this reaches Chromium's processes and nothing else.
        if !self.reaped {
            self.kill_group();
        }
    }
}

/// Chromium started but not connected yet.
struct Launching {
    child: Child,
    group: Option<rustix::process::Pid>,
    log_path: PathBuf,
}

impl Launching {
    /// Waits for `<profile>/DevToolsActivePort` and opens the browser's
    /// WebSocket. On failure Chromium is killed and its log quoted.
    async fn connect(&mut self, profile: &Path) -> Result<Socket> {
        let result = self.try_connect(profile).await;
        if result.is_err() {
            if let Some(group) = self.group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill().await;
        }
        result.map_err(|error| {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                return error.context("launching Chromium (its log is empty)");
            }
            error.context(format!(
                "launching Chromium; the end of its log:\n{}",
                tail.join("\n")
            ))
        })
    }

    async fn try_connect(&mut self, profile: &Path) -> Result<Socket> {
        let port_file = profile.join("DevToolsActivePort");
        let child = &mut self.child;
        let (port, path) = eventually(
            LAUNCH_TIMEOUT,
            "Chromium to write DevToolsActivePort",
            async || {
                if let Some(status) = child.try_wait().context("polling Chromium")? {
                    // Not worth waiting any longer: fail at once.
                    return Ok(Err(anyhow!("Chromium exited at start with {status}")));
                }
                let text = std::fs::read_to_string(&port_file)
                    .with_context(|| format!("reading {}", port_file.display()))?;
                Ok(parse_active_port(&text))
            },
        )
        .await??;
        let url = format!("ws://127.0.0.1:{port}{path}");
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to Chromium's DevTools at {url}"))?;
        // Screenshots come as one message of base64.
        let config = WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (socket, _) = tokio::time::timeout(
            COMMAND_TIMEOUT,
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config)),
        )
        .await
        .map_err(|_| anyhow!("no WebSocket handshake from {url} within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok(socket)
    }
}

/// `DevToolsActivePort`: the port on the first line, the browser target's
/// WebSocket path on the second. A file still being written fails to parse.
fn parse_active_port(text: &str) -> Result<(u16, String)> {
    let mut lines = text.lines();
    let port = lines
        .next()
        .unwrap_or_default()
        .trim()
        .parse::<u16>()
        .with_context(|| format!("no port in DevToolsActivePort: {text:?}"))?;
    let path = lines.next().unwrap_or_default().trim();
    ensure!(
        path.starts_with("/devtools/browser/"),
        "no browser path in DevToolsActivePort: {text:?}"
    );
    Ok((port, path.to_owned()))
}

/// The Chromium to run: `$UPLINK_CHROMIUM` (which must exist), else the
/// first known name on `PATH`.
fn find_chromium() -> Result<Option<PathBuf>> {
    if let Some(path) = env::var_os(CHROMIUM_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(
            is_executable(&path),
            "{CHROMIUM_ENV}={} is not an executable file",
            path.display()
        );
        return Ok(Some(path));
    }
    let dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    Ok(CHROMIUM_NAMES
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| is_executable(candidate)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Writes `line` to stderr directly: the test harness captures `eprintln!`
/// of passing tests, and a skip or a screenshot path must be seen.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `<target dir>/screenshots/`, created: where browser tests put the
/// screenshots people look at. Pass `env!("CARGO_TARGET_TMPDIR")` (set for
/// integration tests only, so the test passes it in): its parent is the
/// target directory.
pub fn screenshots_dir(cargo_target_tmpdir: &str) -> Result<PathBuf> {
    let target = Path::new(cargo_target_tmpdir)
        .parent()
        .ok_or_else(|| anyhow!("CARGO_TARGET_TMPDIR {cargo_target_tmpdir} has no parent"))?;
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// ---- The connection ---------------------------------------------------------

type Answer = std::result::Result<Value, String>;

/// The browser WebSocket's sending half and what the reader task routes to.
struct Connection {
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    next_id: AtomicU64,
    /// Callers waiting for the answer to a command, by message id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Each page's error log, by session id.
    sessions: Mutex<HashMap<String, Arc<Mutex<Vec<String>>>>>,
    /// Why the connection ended, once it has.
    closed: Mutex<Option<String>>,
}

impl Connection {
    fn new(sink: SplitSink<Socket, Message>) -> Self {
        Connection {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        }
    }

    /// Sends `method` (to page `session`, or to the browser) and waits for
    /// its result.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        if let Some(why) = lock(&self.closed).clone() {
            bail!("CDP {method}: the browser connection is closed: {why}");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::text(message.to_string()))
            .await;
        if let Err(error) = sent {
            lock(&self.pending).remove(&id);
            return Err(error).with_context(|| format!("CDP {method}: sending"));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => {
                lock(&self.pending).remove(&id);
                bail!("CDP {method}: no answer within {COMMAND_TIMEOUT:?}")
            }
            Ok(Err(_)) => {
                let why = lock(&self.closed).clone().unwrap_or_default();
                bail!("CDP {method}: the browser connection closed before the answer: {why}")
            }
            Ok(Ok(Err(error))) => bail!("CDP {method} failed: {error}"),
            Ok(Ok(Ok(result))) => Ok(result),
        }
    }

    /// Marks the connection closed and fails every waiting command.
    fn close(&self, why: &str) {
        lock(&self.closed).get_or_insert_with(|| why.to_owned());
        lock(&self.pending).clear();
    }

    /// Routes one message from the browser.
    fn route(&self, message: Value) {
        if let Some(id) = message["id"].as_u64() {
            let answer = match message.get("error") {
                Some(error) => Err(error.to_string()),
                None => Ok(message["result"].clone()),
            };
            if let Some(waiting) = lock(&self.pending).remove(&id) {
                // The caller may have given up; nothing to do then.
                let _ = waiting.send(answer);
            }
            return;
        }
        let Some(session) = message["sessionId"].as_str() else {
            return;
        };
        let Some(error) = page_error(&message) else {
            return;
        };
        let log = lock(&self.sessions).get(session).cloned();
        if let Some(log) = log {
            let mut log = lock(&log);
            if log.len() < MAX_ERRORS {
                log.push(error);
            }
        }
    }
}

/// What an event says went wrong in a page: an uncaught exception, a
/// `console.error`, a log entry of level error (a failed load, a refusal
/// by the Content-Security-Policy), a crash. `None` for other events.
fn page_error(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(exception_text(&params["exceptionDetails"])),
        "Runtime.consoleAPICalled" if params["type"] == "error" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|arg| match &arg["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => arg["description"].as_str().unwrap_or("?").to_owned(),
                    other => other.to_string(),
                })
                .collect();
            Some(format!("console.error: {}", args.join(" ")))
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
            "log ({}): {}",
            params["entry"]["source"].as_str().unwrap_or("?"),
            params["entry"]["text"].as_str().unwrap_or("?")
        )),
        "Inspector.targetCrashed" => Some("the page crashed".to_owned()),
        _ => None,
    }
}

/// A readable line for CDP `exceptionDetails`.
fn exception_text(details: &Value) -> String {
    let description = details["exception"]["description"]
        .as_str()
        .or_else(|| details["exception"]["value"].as_str())
        .or_else(|| details["text"].as_str())
        .unwrap_or("an exception");
    match (details["url"].as_str(), details["lineNumber"].as_u64()) {
        (Some(url), Some(line)) if !url.is_empty() => {
            format!("{description} (at {url}:{})", line + 1)
        }
        _ => description.to_owned(),
    }
}

/// The reader task: routes every message until the socket ends.
async fn read(mut stream: SplitStream<Socket>, connection: Arc<Connection>) {
    let why = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                Ok(message) => connection.route(message),
                Err(error) => break format!("unreadable message from the browser: {error}"),
            },
            Some(Ok(Message::Close(frame))) => break format!("the browser closed it: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => break format!("reading from the browser: {error}"),
            None => break "the browser ended the connection".to_owned(),
        }
    };
    connection.close(&why);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data (maps and logs) stays whole even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- Pages ------------------------------------------------------------------

/// One tab, attached in flat mode.
pub struct Page {
    connection: Arc<Connection>,
    session: String,
    target_id: String,
    errors: Arc<Mutex<Vec<String>>>,
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("target_id", &self.target_id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.connection
            .call(Some(&self.session), method, params)
            .await
    }

    /// Navigates to `url` and waits until its document has loaded. A change
    /// of the URL's fragment alone navigates within the document.
    pub async fn goto(&self, url: &str) -> Result<()> {
        // Marks the document we leave: the old one may still say
        // "complete" until the new one commits. (Fails harmlessly where
        // nothing is loaded yet.)
        let _ = self.eval("window.__uplinkLeaving = true").await;
        let navigated = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .with_context(|| format!("navigating to {url}"))?;
        if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
            bail!("navigating to {url}: {error}");
        }
        // A new document has a loader; a same-document navigation (only
        // the hash changed) has none, and nothing to wait for.
        if navigated["loaderId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
        {
            self.wait_for(
                "window.__uplinkLeaving === undefined && document.readyState === 'complete'",
                NAVIGATION_TIMEOUT,
                &format!("{url} to load"),
            )
            .await?;
        }
        Ok(())
    }

    /// Evaluates `js` in the page and returns its value (a promise is
    /// awaited). A thrown exception is an error carrying its message.
    pub async fn eval(&self, js: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": js,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("evaluating `{js}`: {}", exception_text(details));
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Evaluates `js` until it returns something truthy (not `false`,
    /// `null`, `undefined`, `0` or `""`) and returns that; after `within`,
    /// fails naming `what` and the last value or error seen.
    pub async fn wait_for(&self, js: &str, within: Duration, what: &str) -> Result<Value> {
        eventually(within, what, async || {
            let value = self.eval(js).await?;
            ensure!(truthy(&value), "`{js}` is {value}");
            Ok(value)
        })
        .await
    }

    /// Sets the viewport to `width` x `height` CSS pixels, as a phone
    /// (meta viewport honoured, touch-sized) when `mobile`.
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": mobile,
            }),
        )
        .await
        .with_context(|| format!("setting the viewport to {width}x{height}"))?;
        Ok(())
    }

    /// Writes a PNG of the page to `path`: the viewport, or the whole
    /// document when `full_page`. Prints the path.
    pub async fn screenshot(&self, path: &Path, full_page: bool) -> Result<()> {
        let mut params = json!({"format": "png"});
        if full_page {
            let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
            let size = &metrics["cssContentSize"];
            let (Some(width), Some(height)) = (size["width"].as_f64(), size["height"].as_f64())
            else {
                bail!("Page.getLayoutMetrics without a content size: {metrics}");
            };
            params["clip"] = json!({"x": 0, "y": 0, "width": width, "height": height, "scale": 1});
            params["captureBeyondViewport"] = json!(true);
        }
        let shot = self.call("Page.captureScreenshot", params).await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Page.captureScreenshot answered without data"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("decoding the screenshot")?;
        std::fs::write(path, &png).with_context(|| format!("writing {}", path.display()))?;
        say(&format!("screenshot: {}", path.display()));
        Ok(())
    }

    /// Presses and releases one key: `Tab`, `Enter`, `Escape`, `Space`, an
    /// arrow (`ArrowUp`, ...), `Home` or `End`.
    pub async fn press_key(&self, key: &str) -> Result<()> {
        let (code, key_code, text) = match key {
            "Tab" => ("Tab", 9, None),
            "Enter" => ("Enter", 13, Some("\r")),
            "Escape" => ("Escape", 27, None),
            "Space" => ("Space", 32, Some(" ")),
            "End" => ("End", 35, None),
            "Home" => ("Home", 36, None),
            "ArrowLeft" => ("ArrowLeft", 37, None),
            "ArrowUp" => ("ArrowUp", 38, None),
            "ArrowRight" => ("ArrowRight", 39, None),
            "ArrowDown" => ("ArrowDown", 40, None),
            other => bail!("press_key: no key {other:?}"),
        };
        let dom_key = if key == "Space" { " " } else { key };
        let mut down = json!({
            "type": if text.is_some() { "keyDown" } else { "rawKeyDown" },
            "key": dom_key,
            "code": code,
            "windowsVirtualKeyCode": key_code,
            "nativeVirtualKeyCode": key_code,
        });
        if let Some(text) = text {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down)
            .await
            .with_context(|| format!("pressing {key}"))?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp",
                "key": dom_key,
                "code": code,
                "windowsVirtualKeyCode": key_code,
                "nativeVirtualKeyCode": key_code,
            }),
        )
        .await
        .with_context(|| format!("releasing {key}"))?;
        Ok(())
    }

    /// Uncaught exceptions, `console.error` calls and crashes seen in this
    /// page so far (the first [`MAX_ERRORS`]).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    /// Closes the tab.
    pub async fn close(self) -> Result<()> {
        self.connection
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
            )
            .await?;
        Ok(())
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        lock(&self.connection.sessions).remove(&self.session);
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    //! The driver against a page of its own, served on loopback, so that it
    //! is tested whatever the hub serves. Skipped, saying so, without
    //! Chromium.

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    const PAGE: &str = "<!doctype html><title>t</title>\
        <meta name=viewport content='width=device-width'>\
        <nav><a href='#/a'>A</a> <a href='#/b'>B</a></nav>\
        <main id=view data-view=fleet></main>\
        <script>setTimeout(() => view.dataset.rendered = '1', 200)</script>";

    /// Serves [`PAGE`] for every GET on a loopback port until aborted.
    async fn serve_page() -> Result<(String, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let server = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                });
            }
        });
        Ok((url, server))
    }

    #[test]
    fn reads_devtools_active_port() -> Result<()> {
        let (port, path) = parse_active_port("40123\n/devtools/browser/4b1e-99\n")?;
        assert_eq!((port, path.as_str()), (40123, "/devtools/browser/4b1e-99"));
        assert!(parse_active_port("401").is_err(), "half written");
        assert!(parse_active_port("").is_err());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drives_a_page_it_serves() -> Result<()> {
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };
        assert!(browser.version().contains('/'), "{}", browser.version());
        let (url, server) = serve_page().await?;
        let page = browser.new_page().await?;
        page.goto(&url).await?;

        // eval returns values; exceptions are errors with their message.
        assert_eq!(page.eval("1 + 2").await?, json!(3));
        assert_eq!(
            page.eval("Promise.resolve({a: [1, 'x']})").await?,
            json!({"a": [1, "x"]})
        );
        assert_eq!(page.eval("undefined").await?, Value::Null);
        let thrown = page.eval("throw new Error('boom')").await;
        let message = format!("{:#}", thrown.err().context("a throw is an error")?);
        assert!(message.contains("boom"), "{message}");

        // wait_for polls until truthy, and names what it waited for.
        let rendered = page
            .wait_for("view.dataset.rendered", DEADLINE, "the render")
            .await?;
        assert_eq!(rendered, json!("1"));
        let gave_up = page
            .wait_for(
                "document.title === 'never'",
                Duration::from_millis(300),
                "a title",
            )
            .await;
        let message = format!("{:#}", gave_up.err().context("a timeout is an error")?);
        assert!(message.contains("a title"), "{message}");

        // Tab moves the focus to the first link.
        page.press_key("Tab").await?;
        let focused = page
            .wait_for(
                "document.activeElement && document.activeElement.getAttribute('href')",
                DEADLINE,
                "a focused link",
            )
            .await?;
        assert_eq!(focused, json!("#/a"));

        // A fragment stays in the document; another URL loads a new one.
        page.eval("window.marker = 1").await?;
        page.goto(&format!("{url}#/b")).await?;
        assert_eq!(
            page.eval("[location.hash, window.marker]").await?,
            json!(["#/b", 1])
        );
        page.goto(&format!("{url}?again")).await?;
        assert_eq!(page.eval("window.marker").await?, Value::Null);

        // The viewport, and screenshots as PNG files.
        page.set_viewport(390, 844, true).await?;
        assert_eq!(page.eval("innerWidth").await?, json!(390));
        let dir = tempfile::tempdir()?;
        for (name, full) in [("viewport.png", false), ("full.png", true)] {
            let path = dir.path().join(name);
            page.screenshot(&path, full).await?;
            let png = std::fs::read(&path)?;
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        }

        // Uncaught exceptions are recorded.
        page.eval("setTimeout(() => { throw new Error('late') })")
            .await?;
        eventually(DEADLINE, "the late exception recorded", async || {
            let errors = page.errors();
            ensure!(errors.iter().any(|e| e.contains("late")), "{errors:?}");
            Ok(())
        })
        .await?;

        page.close().await?;
        server.abort();
        browser.close().await
    }
}

//! The operator page in a real browser (issue 19): a headless Chromium
//! opens the hub's `/ui/` against a running fleet of three clusters with
//! nodes. The fleet table shows every cluster Ready and Healthy; a node
//! turning NotReady shows its cluster Degraded within seconds, without a
//! reload; a generation rolled out to two of three clusters shows on the
//! conflicts page; the cluster, objects and object pages render. Each page
//! is written as a screenshot under `<target>/screenshots/` for people to
//! look at, and checked lightly for accessibility: tables are labelled,
//! charts have a text alternative, the navigation is reachable by keyboard.
//!
//! Without Chromium (see README, "Run the tests") the test says it is
//! skipped and passes.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use uplink_tests::browser::{Browser, Page, say, screenshots_dir};
use uplink_tests::fleet::capacity::{NodeResources, pod};
use uplink_tests::fleet::{
    Fleet, SCENARIO_TIMEOUT, STATUS_DEADLINE, bounded, deployment, eventually,
};

const WORKSPACE: &str = "root:org:team-a";
const NAMESPACE: &str = "shop";
const CLUSTERS: [&str; 3] = ["east", "north", "west"];
/// The object the conflict is about, as the hub API names it.
const OBJECT_PATH: &str = "root:org:team-a/apps/deployments/shop/web";

/// A laptop's viewport, and a phone's (an iPhone 12-14 in CSS pixels).
const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

/// How long the page may take to show what the hub knows: the hub's own
/// deadline plus two of the page's 2-second polls.
const PAGE_DEADLINE: Duration = Duration::from_secs(STATUS_DEADLINE.as_secs() + 4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_the_fleet_in_a_browser() -> Result<()> {
    let Some(browser) = Browser::launch().await? else {
        say("operator_page: skipped: the browser scenario needs Chromium");
        return Ok(());
    };
    say(&format!("operator_page: {}", browser.version()));
    let shots = screenshots_dir(env!("CARGO_TARGET_TMPDIR"))?;
    forget_screenshots(&shots)?;
    let page = browser.new_page().await?;
    let outcome = bounded(SCENARIO_TIMEOUT, scenario(&page, &shots)).await;
    if outcome.is_err() {
        // What the page showed when the scenario failed, best effort.
        let _ = page
            .screenshot(&shots.join("operator-failed.png"), true)
            .await;
    }
    drop(page);
    let closed = browser.close().await;
    outcome?;
    closed
}

/// Removes this test's screenshots of an earlier run, so that what is
/// there afterwards is all from this one.
fn forget_screenshots(shots: &Path) -> Result<()> {
    for entry in std::fs::read_dir(shots)? {
        let path = entry?.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("operator-") && n.ends_with(".png"));
        if ours {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

async fn scenario(page: &Page, shots: &Path) -> Result<()> {
    let fleet = Fleet::builder()
        .clusters(CLUSTERS)
        .workspaces([WORKSPACE])
        .hub_config(|c| c.capacity.sample_interval = Duration::from_millis(200))
        .start()
        .await?;
    give_nodes(&fleet).await?;

    // The operator opens the hub's address; it sends them to /ui/.
    page.set_viewport(DESKTOP.0, DESKTOP.1, false).await?;
    page.goto(&format!("http://{}/", fleet.hub_http_addr()))
        .await?;
    let path = page.eval("location.pathname").await?;
    ensure!(path == "/ui/", "/ redirected to {path}, not /ui/");
    ensure!(
        page.eval("document.visibilityState").await? == "visible",
        "the tab is hidden: the page would not poll"
    );

    // Every cluster is listed, Ready and Healthy, with a link to its page.
    shows(page, "fleet").await?;
    fleet_shows(page, "every cluster Ready and Healthy", |rows| {
        for cluster in CLUSTERS {
            let row = row_of(rows, cluster)?;
            ensure!(
                (first_word(&row["state"]), first_word(&row["health"])) == ("Ready", "Healthy"),
                "{cluster}: {row}"
            );
            ensure!(row["link"] == true, "{cluster} has no link to its page");
        }
        Ok(())
    })
    .await?;
    page.eval("window.__uplinkNoReload = true").await?;

    // A node of north turns NotReady: north shows Degraded, without a
    // reload, the others stay Healthy.
    let since = tokio::time::Instant::now();
    fleet.set_node_ready("north", "north-2", false).await?;
    fleet_shows(page, "north Degraded", |rows| {
        for cluster in CLUSTERS {
            let want = if cluster == "north" {
                "Degraded"
            } else {
                "Healthy"
            };
            let row = row_of(rows, cluster)?;
            ensure!(first_word(&row["health"]) == want, "{cluster}: {row}");
        }
        Ok(())
    })
    .await?;
    say(&format!(
        "operator_page: north shown Degraded {:.1} s after its node turned NotReady",
        since.elapsed().as_secs_f64()
    ));
    ensure!(
        page.eval("window.__uplinkNoReload").await? == true,
        "the page reloaded to show the change"
    );
    page.screenshot(&shots.join("operator-fleet.png"), true)
        .await?;
    accessible(page, "fleet").await?;

    // The same page on a phone.
    page.set_viewport(PHONE.0, PHONE.1, true).await?;
    next_render(page, "fleet").await?;
    page.screenshot(&shots.join("operator-fleet-phone.png"), true)
        .await?;
    // Nothing but a table's own box scrolls sideways at a phone's width.
    let widths = page
        .eval("[document.documentElement.scrollWidth, window.innerWidth]")
        .await?;
    ensure!(
        widths[0].as_f64() <= widths[1].as_f64(),
        "the page is wider than the phone: {widths}"
    );
    page.set_viewport(DESKTOP.0, DESKTOP.1, false).await?;

    // After the screenshots, which should not show a focus ring.
    keyboard_reaches_the_navigation(page).await?;
    // The skip link moves focus to the content and leaves the view as it is.
    let skipped = page
        .eval(
            r#"(() => {
                document.querySelector('a.skip').click();
                return { focus: document.activeElement?.id, hash: location.hash,
                         view: document.getElementById('view').dataset.view };
            })()"#,
        )
        .await?;
    ensure!(
        skipped["focus"] == "view" && skipped["view"] == "fleet" && skipped["hash"] != "#view",
        "the skip link: {skipped}"
    );

    // A generation rolled out to east and west but not north: a
    // GenerationSkew conflict on the conflicts page.
    make_generation_skew(&fleet).await?;
    click(page, r##"nav a[href="#/conflicts"]"##, "conflicts").await?;
    let row = eventually(PAGE_DEADLINE, "web's GenerationSkew row", async || {
        let rows = page
            .eval(
                r#"[...document.querySelectorAll('table#conflicts tbody tr[data-object-name="web"]')]
                    .map(r => ({
                        type: r.querySelector('td[data-field="type"]')?.textContent.trim(),
                        strategy: r.querySelector('td[data-field="strategy"]')?.textContent.trim(),
                        text: r.textContent,
                    }))"#,
            )
            .await?;
        let found = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["type"] == "GenerationSkew")
            .cloned();
        let alert = alert(page).await;
        found.with_context(|| format!("rows {rows}; {alert}"))
    })
    .await?;
    ensure!(
        row["strategy"].as_str().is_some_and(|s| !s.is_empty()),
        "no strategy: {row}"
    );
    ensure!(
        page.eval("!!document.querySelector('table#conflict-history')")
            .await?
            == true,
        "no conflict history table"
    );
    page.screenshot(&shots.join("operator-conflicts.png"), true)
        .await?;
    accessible(page, "conflicts").await?;

    // From the fleet to north's page: its record, its capacity chart, the
    // objects it reports.
    click(page, r##"nav a[href="#/"]"##, "fleet").await?;
    click(
        page,
        r##"table#fleet a[href="#/clusters/north"]"##,
        "cluster",
    )
    .await?;
    page.wait_for(
        r#"document.querySelector('section#cluster-record')
            && document.querySelector('figure#capacity-chart canvas')
            && document.querySelector('figure#capacity-chart figcaption')?.textContent.trim()
            && document.querySelector('table#cluster-objects')?.textContent.includes('web')"#,
        PAGE_DEADLINE,
        "north's record, capacity chart and objects",
    )
    .await?;
    page.screenshot(&shots.join("operator-cluster.png"), true)
        .await?;
    accessible(page, "cluster").await?;

    // The objects, and the conflicting one's page.
    click(page, r##"nav a[href="#/objects"]"##, "objects").await?;
    page.wait_for(
        r#"document.querySelector('table#objects tr[data-object-name="web"]')"#,
        PAGE_DEADLINE,
        "web in the objects table",
    )
    .await?;
    page.screenshot(&shots.join("operator-objects.png"), true)
        .await?;
    accessible(page, "objects").await?;

    go(page, &format!("#/objects/{OBJECT_PATH}"), "object").await?;
    page.wait_for(
        r#"(() => {
            const text = document.querySelector('table#object-clusters')?.textContent || '';
            return ['east', 'north', 'west'].every(c => text.includes(c));
        })()"#,
        PAGE_DEADLINE,
        "web's status in each cluster",
    )
    .await?;
    page.screenshot(&shots.join("operator-object.png"), true)
        .await?;
    accessible(page, "object").await?;

    // The whole visit was one document, and nothing went wrong in it.
    ensure!(
        page.eval("window.__uplinkNoReload").await? == true,
        "the page reloaded while navigating"
    );
    let errors = page.errors();
    ensure!(errors.is_empty(), "errors in the page: {errors:#?}");
    fleet.shutdown().await
}

// ---- The fleet ----------------------------------------------------------------

fn res<'a>(cpu: &'a str, memory: &'a str) -> NodeResources<'a> {
    NodeResources {
        cpu,
        memory,
        ephemeral_storage: "100Gi",
        pods: "110",
        extended: &[],
    }
}

/// Two Ready nodes per cluster (so one NotReady is Degraded, not
/// Unhealthy) and a pod on each cluster, so there is an allocation to plot.
async fn give_nodes(fleet: &Fleet) -> Result<()> {
    for (cluster, cpu) in CLUSTERS.into_iter().zip(["4", "8", "16"]) {
        for node in 1..=2 {
            let name = format!("{cluster}-{node}");
            fleet
                .create_node(cluster, &name, res(cpu, "16Gi"), res(cpu, "15Gi"), true)
                .await?;
        }
        fleet.create_cluster_namespace(cluster, "ops", None).await?;
        let bound = format!("{cluster}-1");
        fleet
            .create_pod(
                cluster,
                pod("ops", "monitor", Some(&bound), &[("1500m", "3Gi")]),
                "Running",
            )
            .await?;
    }
    Ok(())
}

fn rolled_out(ready: i64, generation: i64) -> Value {
    json!({
        "observedGeneration": generation, "replicas": ready, "updatedReplicas": ready,
        "readyReplicas": ready, "availableReplicas": ready,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    })
}

/// `web` on all three clusters, generation 2 observed by east and west,
/// 1 by north (tests/tests/aggregation.rs has the same).
async fn make_generation_skew(fleet: &Fleet) -> Result<()> {
    fleet
        .place(WORKSPACE, NAMESPACE, &deployment("web", 3), &CLUSTERS)
        .await?;
    for (cluster, generation) in [("east", 2), ("north", 1), ("west", 2)] {
        fleet
            .set_status::<Deployment>(
                cluster,
                WORKSPACE,
                NAMESPACE,
                "web",
                rolled_out(1, generation),
            )
            .await?;
    }
    Ok(())
}

// ---- The page -----------------------------------------------------------------

/// The fleet table's rows: name, state, health, and whether the name
/// links to the cluster's page.
const FLEET_ROWS: &str = r##"[...document.querySelectorAll('table#fleet tbody tr[data-cluster]')]
    .map(r => ({
        cluster: r.dataset.cluster,
        state: r.querySelector('td[data-field="state"]')?.textContent.trim(),
        health: r.querySelector('td[data-field="health"]')?.textContent.trim(),
        link: !!r.querySelector(`a[href="#/clusters/${r.dataset.cluster}"]`),
    }))"##;

/// Waits until the fleet table's rows pass `check`.
async fn fleet_shows(
    page: &Page,
    what: &str,
    check: impl Fn(&[Value]) -> Result<()>,
) -> Result<()> {
    eventually(PAGE_DEADLINE, what, async || {
        let rows = page.eval(FLEET_ROWS).await?;
        let rows = rows.as_array().cloned().unwrap_or_default();
        let alert = alert(page).await;
        check(&rows).with_context(|| alert)
    })
    .await
}

fn row_of<'a>(rows: &'a [Value], cluster: &str) -> Result<&'a Value> {
    let Some(row) = rows.iter().find(|r| r["cluster"] == cluster) else {
        bail!("no row for {cluster} in {rows:?}");
    };
    Ok(row)
}

/// A cell's first word: `Degraded` of `Degraded (1 of 2 nodes not Ready)`.
fn first_word(cell: &Value) -> &str {
    cell.as_str()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
}

/// What the page's `#error` says, for failure messages.
async fn alert(page: &Page) -> String {
    match page
        .eval("document.getElementById('error')?.textContent.trim()")
        .await
    {
        Ok(Value::String(text)) if !text.is_empty() => format!("#error says {text:?}"),
        Ok(_) => "#error is empty".to_owned(),
        Err(error) => format!("#error unreadable: {error:#}"),
    }
}

/// The number of renders so far (`data-rendered` on `main#view`).
async fn renders(page: &Page) -> Result<u64> {
    let n = page
        .eval("Number(document.getElementById('view')?.dataset.rendered || 0)")
        .await?;
    n.as_u64().with_context(|| format!("data-rendered is {n}"))
}

/// Waits until `main#view` shows `view`, rendered with data at least once
/// more than `after` times, with no error.
async fn rendered(page: &Page, view: &str, after: u64) -> Result<()> {
    let js = format!(
        r#"(() => {{
            const main = document.querySelector('main#view');
            const error = document.getElementById('error')?.textContent.trim();
            if (error) throw new Error('#error says: ' + error);
            return main?.dataset.view === {view} && Number(main.dataset.rendered) > {after};
        }})()"#,
        view = json!(view),
    );
    page.wait_for(&js, PAGE_DEADLINE, &format!("the {view} view rendered"))
        .await?;
    Ok(())
}

/// Waits for the page's first render of `view`.
async fn shows(page: &Page, view: &str) -> Result<()> {
    rendered(page, view, 0).await
}

/// Waits for the next render of the current `view` (the 2-second poll).
async fn next_render(page: &Page, view: &str) -> Result<()> {
    let now = renders(page).await?;
    rendered(page, view, now).await
}

/// Clicks the link `selector` and waits for `view` to render.
async fn click(page: &Page, selector: &str, view: &str) -> Result<()> {
    let before = renders(page).await?;
    let js = format!(
        "(() => {{ const a = document.querySelector({s}); if (!a) return false; a.click(); return true; }})()",
        s = json!(selector),
    );
    page.wait_for(&js, PAGE_DEADLINE, &format!("a link {selector} to click"))
        .await?;
    rendered(page, view, before).await
}

/// Goes to `hash` within the page (as a bookmark would) and waits for
/// `view` to render.
async fn go(page: &Page, hash: &str, view: &str) -> Result<()> {
    let before = renders(page).await?;
    page.eval(&format!("location.hash = {}", json!(hash)))
        .await?;
    rendered(page, view, before).await
}

/// A light accessibility check of the current view: every table has a
/// caption or an aria-label, every figure a non-empty figcaption. A table
/// inside `role="img"` (uPlot's legend in a chart with a text alternative)
/// is presentational and not checked. And the view shows no `[object `,
/// `undefined` or `NaN`, what a slip in the page's code prints.
async fn accessible(page: &Page, view: &str) -> Result<()> {
    let problems = page
        .eval(
            r#"(() => {
                const problems = [];
                for (const t of document.querySelectorAll('table')) {
                    // Inside an image (a chart's legend) or hidden: not a table to assistive technology.
                    if (t.closest('[role="img"], [aria-hidden="true"]')) continue;
                    const caption = t.querySelector(':scope > caption')?.textContent.trim();
                    const label = (t.getAttribute('aria-label') || '').trim()
                        || t.getAttribute('aria-labelledby');
                    if (!caption && !label) problems.push(`table ${t.id || t.className || '?'} has no caption or aria-label`);
                }
                for (const f of document.querySelectorAll('figure')) {
                    if (!f.querySelector('figcaption')?.textContent.trim())
                        problems.push(`figure ${f.id || '?'} has no figcaption text`);
                }
                // What a slip in the page's code prints instead of data.
                const text = document.querySelector('main#view')?.innerText || '';
                for (const slip of ['[object ', 'undefined', 'NaN']) {
                    if (text.includes(slip)) problems.push(`the view shows "${slip}"`);
                }
                return problems;
            })()"#,
        )
        .await?;
    ensure!(
        problems.as_array().is_some_and(Vec::is_empty),
        "the {view} view: {problems}"
    );
    Ok(())
}

/// From nothing focused, Tab reaches a link of the navigation within a few
/// presses (a skip link and the brand may come first).
async fn keyboard_reaches_the_navigation(page: &Page) -> Result<()> {
    page.eval("document.activeElement?.blur(); window.getSelection().removeAllRanges()")
        .await?;
    let mut seen = Vec::new();
    for _ in 0..8 {
        page.press_key("Tab").await?;
        let focused = page
            .eval(
                r#"(() => {
                    const el = document.activeElement;
                    return { nav: !!el?.matches('nav a'), what: el ? el.outerHTML.slice(0, 80) : null };
                })()"#,
            )
            .await?;
        if focused["nav"] == true {
            return Ok(());
        }
        seen.push(focused["what"].clone());
    }
    bail!("Tab never focused a navigation link; focused in turn: {seen:?}")
}

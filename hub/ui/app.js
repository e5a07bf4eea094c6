// The operator's page: a client of the hub API, nothing more.
//
// One view at a time (the fleet, a cluster, the objects, one object, the
// conflicts), chosen by the URL's hash so every view has an address and the
// browser's back button works. The view's data is read from /api/v1 every
// POLL_MS while the tab is visible, and the DOM is updated in place: rows are
// keyed (data-cluster, data-object-name) and a cell is replaced only when
// what it shows changed, so a keyboard user's focus survives the updates.
//
// Everything a cluster reports is written with textContent, never as HTML.
// Tests rely on: main#view[data-view][data-rendered] (a count of renders),
// table ids, row keys and td[data-field] (see tests/tests/operator_page.rs).
"use strict";

(() => {
  const POLL_MS = 2000;
  /** A request that has not answered by then is given up (and retried). */
  const FETCH_TIMEOUT_MS = 10000;
  const PAGE = 200;

  const view = document.getElementById("view");
  const errorBox = document.getElementById("error");
  const announcer = document.getElementById("announce");
  const freshness = document.getElementById("freshness");

  // ---- small DOM helpers -------------------------------------------------

  /** Builds an element: h("td", {class: "num", dataset: {field: "x"}}, "text", child). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "text") el.textContent = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function badge(word) {
    return h("span", { class: `badge ${word}` }, word);
  }

  /** A share 0..1 as a meter and its percentage; "–" when unknown. */
  function bar(fraction, label) {
    if (fraction === null || fraction === undefined || !isFinite(fraction)) {
      return h("span", { class: "muted" }, "–");
    }
    const pct = `${Math.round(fraction * 100)}%`;
    return h(
      "span",
      { class: "bar" },
      h("meter", { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0.2, value: fraction, "aria-label": `${label} ${pct}` }),
      h("span", {}, pct),
    );
  }

  /** A table in its scrolling box: columns are [label, {class}] pairs. */
  function table(id, caption, columns) {
    const head = h("tr", {}, columns.map(([label, attrs]) => h("th", { scope: "col", ...(attrs || {}) }, label)));
    const body = h("tbody");
    const el = h("table", { id }, h("caption", {}, caption), h("thead", {}, head), body);
    return { box: h("div", { class: "table-scroll" }, el), body, table: el };
  }

  /** A cell; `key` names it for updates (and for tests, as data-field). */
  function td(field, content, attrs) {
    return h("td", { dataset: { field }, ...(attrs || {}) }, content);
  }

  /**
   * Makes `body` hold one row per item, in order, reusing the row of the
   * same key and, inside it, every cell whose content did not change.
   * `datasetOf(item)` gives the row's other data- attributes.
   */
  function syncRows(body, items, keyOf, cellsOf, datasetOf) {
    const old = new Map();
    for (const row of Array.from(body.rows)) old.set(row.dataset.key, row);
    const rows = items.map((item) => {
      const key = keyOf(item);
      const cells = cellsOf(item);
      let row = old.get(key);
      old.delete(key);
      if (!row) {
        row = h("tr", { dataset: { key, ...(datasetOf ? datasetOf(item) : {}) } }, cells);
        return row;
      }
      cells.forEach((cell, i) => {
        const now = row.cells[i];
        if (!now || now.outerHTML !== cell.outerHTML) {
          if (now) now.replaceWith(cell);
          else row.append(cell);
        }
      });
      while (row.cells.length > cells.length) row.lastElementChild.remove();
      return row;
    });
    for (const row of old.values()) row.remove();
    rows.forEach((row, i) => {
      if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    });
  }

  /** A row saying why the table is empty (removed by the next syncRows). */
  function emptyRow(body, columns, text) {
    if (body.rows.length === 0) {
      body.append(h("tr", { dataset: { key: "" } }, h("td", { colspan: columns }, text)));
    }
  }

  // ---- formatting --------------------------------------------------------

  /** Hub clock minus browser clock, from each answer's Date header (ms). */
  let hubSkewMs = 0;

  function since(rfc3339) {
    if (!rfc3339) return null;
    const t = Date.parse(rfc3339);
    return isNaN(t) ? null : Math.max(0, Date.now() + hubSkewMs - t);
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const hours = Math.floor(m / 60);
    if (hours < 48) return `${hours}h ${m % 60}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function ago(rfc3339) {
    const ms = since(rfc3339);
    return ms === null ? "never" : `${duration(ms)} ago`;
  }

  const cores = (millis) => `${(millis / 1000).toFixed(millis % 1000 ? 1 : 0)}`;
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
  }

  /** A status in a line: top-level scalars, then conditions as Type=Status. */
  function statusLine(status) {
    if (!status || typeof status !== "object") return "–";
    const parts = [];
    for (const [key, value] of Object.entries(status)) {
      if (value === null || typeof value !== "object") parts.push(`${key} ${value}`);
    }
    for (const c of Array.isArray(status.conditions) ? status.conditions : []) {
      if (c && c.type) parts.push(`${c.type}=${c.status}`);
    }
    const line = parts.join(" · ");
    return line.length > 160 ? `${line.slice(0, 157)}…` : line || "{}";
  }

  /** Leaf fields of a status as path → text; conditions keyed by type. */
  function leaves(value, path, out) {
    if (Array.isArray(value)) {
      const byType = value.every((v) => v && typeof v === "object" && typeof v.type === "string");
      value.forEach((v, i) => leaves(v, `${path}[${byType ? v.type : i}]`, out));
      if (value.length === 0) out.set(path, "[]");
    } else if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) leaves(v, path ? `${path}.${k}` : k, out);
    } else {
      out.set(path, value === undefined ? "" : JSON.stringify(value));
    }
    return out;
  }

  // ---- the API -----------------------------------------------------------

  /** Aborts the requests of the refresh in progress (timeout, new view). */
  let requests = new AbortController();

  async function api(path) {
    const response = await fetch(path, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      signal: requests.signal,
    });
    // The Date header has whole seconds: take a new skew only when it moved
    // by more than that, or ages would flicker between polls.
    const date = Date.parse(response.headers.get("Date") || "");
    if (!isNaN(date) && Math.abs(date - Date.now() - hubSkewMs) > 1500) hubSkewMs = date - Date.now();
    if (!response.ok) {
      const detail = (await response.text()).trim();
      throw new Error(`${path}: ${response.status} ${response.statusText}${detail ? `: ${detail}` : ""}`);
    }
    return response.json();
  }

  /** A path segment, escaped but for `:` (workspace paths, which RBAC grants match as written). */
  const segment = (text) => encodeURIComponent(text).replace(/%3A/gi, ":");
  const objectPath = (o) =>
    [o.workspace, o.group || "core", o.resource, o.namespace || "_", o.name].map(segment).join("/");

  /**
   * A value fetched at most every `ms` (history that changes once a sample
   * interval need not be read every POLL_MS); an answer `worthKeeping` does
   * not accept (no samples yet) is asked again at the next poll.
   */
  function every(ms, fetcher, worthKeeping = () => true) {
    let at = 0;
    let value = null;
    return async () => {
      if (value === null || Date.now() - at >= ms) {
        const fresh = await fetcher();
        value = fresh;
        at = worthKeeping(fresh) ? Date.now() : 0;
      }
      return value;
    };
  }
  const hasPoints = (history) => (history.points || []).length > 0;
  const objectName = (o) => (o.namespace ? `${o.namespace}/${o.name}` : o.name);
  const objectLink = (o) => h("a", { href: `#/objects/${objectPath(o)}` }, objectName(o));
  const clusterLink = (name) => h("a", { href: `#/clusters/${segment(name)}` }, name);

  /** Paging through a hub API list with its continue tokens. */
  class Pager {
    constructor(onMove) {
      this.tokens = [""];
      this.next = null;
      this.onMove = onMove;
      this.prevButton = h("button", { type: "button" }, "Previous page");
      this.nextButton = h("button", { type: "button" }, "Next page");
      this.label = h("span", { "aria-live": "polite" });
      this.prevButton.addEventListener("click", () => { this.tokens.pop(); this.onMove(); });
      this.nextButton.addEventListener("click", () => { this.tokens.push(this.next); this.onMove(); });
      this.el = h("div", { class: "pager" }, this.prevButton, this.nextButton, this.label);
    }
    /** Whether the list has more than this one page. */
    paged(list) {
      return this.tokens.length > 1 || Boolean(list.metadata && list.metadata.continue);
    }
    query() {
      const token = this.tokens[this.tokens.length - 1];
      return token ? `&continue=${encodeURIComponent(token)}` : "";
    }
    update(list, shown) {
      this.next = list.metadata && list.metadata.continue;
      const remaining = (list.metadata && list.metadata.remainingItemCount) || 0;
      this.prevButton.disabled = this.tokens.length <= 1;
      this.nextButton.disabled = !this.next;
      this.el.hidden = this.tokens.length <= 1 && !this.next;
      this.label.textContent = `page ${this.tokens.length}: ${shown} shown, ${remaining} after`;
    }
  }

  // ---- capacity plots ----------------------------------------------------

  const RESOURCES = {
    cpu: { title: "CPU", unit: "cores", amount: (a) => a.cpu_millis / 1000, text: (v) => `${v.toFixed(1)} cores`, tick: (v) => `${+v.toFixed(2)}`, perHour: (v) => `${(v / 1000).toFixed(2)} cores` },
    memory: { title: "Memory", unit: "GiB", amount: (a) => a.memory_bytes, text: (v) => bytes(v), tick: (v) => `${+(v / 2 ** 30).toFixed(1)}`, perHour: (v) => bytes(Math.abs(v)) },
  };

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  /**
   * History a trend needs before the page states it: a fit over a few
   * seconds turns one new Deployment into "hundreds of cores an hour".
   */
  const TREND_SPAN_MS = 10 * 60 * 1000;

  /** The trend of `resource`, if the history is long enough to state one. */
  function trendOf(history, resource) {
    const points = history.points || [];
    const span = points.length ? points[points.length - 1].at_ms - points[0].at_ms : 0;
    if (span < TREND_SPAN_MS) return null;
    return (history.trends || []).find((t) => t.resource === resource) || null;
  }

  /** What a plot shows, in words: its text alternative. */
  function describe(resource, points, trend) {
    const r = RESOURCES[resource];
    const last = points[points.length - 1];
    if (!last) return `${r.title}: no capacity samples yet.`;
    const allocated = r.amount(last.allocated);
    const allocatable = r.amount(last.allocatable);
    const share = allocatable > 0 ? ` (${Math.round((allocated / allocatable) * 100)}%)` : "";
    let text = `${r.title}: ${r.text(allocated)} of ${r.text(allocatable)} allocated${share}`;
    if (trend && trend.allocated_per_hour > 0) {
      text += `, rising ${r.perHour(trend.allocated_per_hour)} an hour`;
      text += trend.allocation_exhausted_in_s !== null && trend.allocation_exhausted_in_s !== undefined
        ? `; at that rate allocation runs out in about ${duration(trend.allocation_exhausted_in_s * 1000)}.`
        : ".";
    } else if (trend && trend.allocated_per_hour < 0) {
      text += `, falling ${r.perHour(trend.allocated_per_hour)} an hour; no exhaustion forecast.`;
    } else {
      text += trend ? ", steady; no exhaustion forecast." : `; under ${TREND_SPAN_MS / 60000} minutes of history, too little for a trend.`;
    }
    return `${text} ${points.length} samples.`;
  }

  /** The series of a plot: allocatable, allocated, used, and the forecast. */
  function plotData(resource, points, trend) {
    const r = RESOURCES[resource];
    const xs = points.map((p) => p.at_ms / 1000);
    const allocatable = points.map((p) => r.amount(p.allocatable));
    const allocated = points.map((p) => r.amount(p.allocated));
    const used = points.map((p) => (p.used ? r.amount(p.used) : null));
    const forecast = points.map(() => null);
    const last = points.length - 1;
    if (trend && trend.allocated_per_hour > 0 && last >= 1) {
      // The trend carried forward as far as the history reaches back, so
      // the past keeps its width: to allocatable when it runs out within
      // that, else to where the trend stands then.
      const span = xs[last] - xs[0];
      const exhausted = trend.allocation_exhausted_in_s;
      const perSecond = r.amount({ cpu_millis: trend.allocated_per_hour, memory_bytes: trend.allocated_per_hour }) / 3600;
      const reaches = exhausted !== null && exhausted !== undefined && exhausted <= span;
      const horizon = reaches ? exhausted : span;
      forecast[last] = allocated[last];
      xs.push(xs[last] + horizon);
      allocatable.push(allocatable[last]);
      allocated.push(null);
      used.push(null);
      forecast.push(reaches ? allocatable[last] : allocated[last] + perSecond * horizon);
    }
    return [xs, allocatable, allocated, used, forecast];
  }

  /** A figure with a plot of one resource's history and its caption. */
  class CapacityPlot {
    constructor(id, resource) {
      this.resource = resource;
      this.caption = h("figcaption");
      this.plot = h("div", { class: "plot", role: "img" });
      this.el = h("figure", { id }, h("h3", { class: "visually-hidden" }, RESOURCES[resource].title), this.plot, this.caption);
      this.chart = null;
      this.shown = "";
    }
    update(history) {
      const points = history.points || [];
      const trend = trendOf(history, this.resource);
      const text = describe(this.resource, points, trend);
      this.caption.textContent = text;
      this.plot.setAttribute("aria-label", text);
      const signature = `${points.length}:${points.length ? points[points.length - 1].at_ms : 0}:${this.plot.clientWidth}`;
      if (signature === this.shown || typeof uPlot === "undefined" || points.length === 0) return;
      this.shown = signature;
      const r = RESOURCES[this.resource];
      const data = plotData(this.resource, points, trend);
      if (this.chart) this.chart.destroy();
      const muted = cssVar("--muted");
      const grid = { stroke: cssVar("--line"), width: 1 };
      this.chart = new uPlot(
        {
          width: Math.max(this.plot.clientWidth, 280),
          height: 220,
          scales: { x: { time: true } },
          axes: [
            { stroke: muted, grid },
            { stroke: muted, grid, size: 56, label: r.unit, values: (u, values) => values.map((v) => r.tick(v)) },
          ],
          series: [
            {},
            { label: "Allocatable", stroke: muted, width: 1.5 },
            { label: "Allocated", stroke: cssVar("--link"), width: 2 },
            { label: "Used", stroke: cssVar("--ok"), width: 1.5 },
            { label: "Forecast", stroke: cssVar("--warn"), width: 1.5, dash: [6, 4], spanGaps: true },
          ],
        },
        data,
        this.plot,
      );
    }
  }

  // ---- views -------------------------------------------------------------

  /** The fleet: every cluster in a table, with the fleet's totals. */
  function fleetView() {
    const pager = new Pager(() => refreshNow());
    const summary = h("ul", { class: "summary", "aria-label": "Fleet totals" });
    const clusters = table("fleet", "Clusters: link state, health, heartbeat, traffic and allocation; live.", [
      ["Cluster"], ["State"], ["Health"], ["Heartbeat", { class: "wide-only" }], ["Connected for", { class: "wide-only" }],
      ["Objects", { class: "num wide-only" }], ["Deltas/s", { class: "num wide-only" }], ["CPU allocated"], ["Memory allocated", { class: "wide-only" }],
    ]);
    const previous = new Map();
    const healthOf = new Map();
    const fleetHistory = every(15000, () =>
      api(`/api/v1/capacity/history?from=${Math.round(Date.now() + hubSkewMs - 10 * 60 * 1000)}`), hasPoints);
    return {
      name: "fleet",
      title: "Fleet",
      mount(root) {
        root.append(
          h("h1", { tabindex: -1 }, "Fleet"),
          h("p", { class: "lede" }, "Every cluster the hub knows. Select one for its record, capacity and objects."),
          summary, clusters.box, pager.el,
        );
      },
      async refresh() {
        const [list, fleet] = await Promise.all([
          api(`/api/v1/clusters?limit=${PAGE}${pager.query()}`),
          fleetHistory(),
        ]);
        const now = Date.now();
        const items = list.items || [];
        const counts = {};
        for (const c of items) {
          counts[c.state] = (counts[c.state] || 0) + 1;
          counts[c.health] = (counts[c.health] || 0) + 1;
          const was = healthOf.get(c.name);
          if (was && was !== c.health) announce(`Cluster ${c.name} is now ${c.health}: ${c.health_reason}`);
          healthOf.set(c.name, c.health);
        }
        const last = (fleet.points || []).slice(-1)[0];
        const share = (pick) => (last && pick(last.allocatable) > 0 ? pick(last.allocated) / pick(last.allocatable) : null);
        summary.replaceChildren(
          h("li", {}, h("strong", {}, items.length + ((list.metadata && list.metadata.remainingItemCount) || 0)), "clusters"),
          ...["Ready", "Stale", "Offline", "Healthy", "Degraded", "Unhealthy", "Unknown"]
            .filter((k) => counts[k])
            .map((k) => h("li", {}, h("strong", {}, counts[k]), k, pager.paged(list) ? " on this page" : "")),
          h("li", {}, "Fleet CPU ", bar(share((a) => a.cpu_millis), "fleet CPU allocated")),
          h("li", {}, "Fleet memory ", bar(share((a) => a.memory_bytes), "fleet memory allocated")),
        );
        syncRows(clusters.body, items, (c) => c.name, (c) => {
          const before = previous.get(c.name);
          const rate = before && now > before.at ? ((c.deltas_received - before.deltas) * 1000) / (now - before.at) : null;
          return [
            h("th", { scope: "row", dataset: { field: "name" } }, clusterLink(c.name)),
            td("state", badge(c.state)),
            td("health", badge(c.health), { title: c.health_reason }),
            td("heartbeat", ago(c.last_heartbeat), { class: "wide-only" }),
            td("connected", c.connected_since ? duration(since(c.connected_since)) : "not connected", { class: "wide-only" }),
            td("objects", c.objects, { class: "num wide-only" }),
            td("deltas", rate === null ? "–" : Math.max(0, rate).toFixed(1), { class: "num wide-only" }),
            td("cpu", bar(c.allocation && c.allocation.cpu, `${c.name} CPU allocated`)),
            td("memory", bar(c.allocation && c.allocation.memory, `${c.name} memory allocated`), { class: "wide-only" }),
          ];
        }, (c) => ({ cluster: c.name }));
        for (const c of items) previous.set(c.name, { deltas: c.deltas_received, at: now });
        emptyRow(clusters.body, 9, "No cluster has connected yet.");
        pager.update(list, items.length);
      },
    };
  }

  /** One cluster: its record, capacity history with forecast, its objects. */
  function clusterView(name) {
    const record = h("dl", { class: "record" });
    const cpu = new CapacityPlot("capacity-chart", "cpu");
    const memory = new CapacityPlot("memory-chart", "memory");
    const objects = table("cluster-objects", `Objects ${name} reports, with the status it reports.`, [
      ["Object"], ["Kind"], ["Workspace"], ["Status here"], ["Observed", { class: "wide-only" }],
    ]);
    const pager = new Pager(() => refreshNow());
    const heading = h("h1", { tabindex: -1 }, name);
    const history = every(15000, () => api(`/api/v1/capacity/history?cluster=${segment(name)}`), hasPoints);
    return {
      name: "cluster",
      title: `Cluster ${name}`,
      mount(root) {
        root.append(
          heading,
          h("section", { id: "cluster-record", "aria-labelledby": "record-heading" }, h("h2", { id: "record-heading" }, "Record"), record),
          h("section", { "aria-labelledby": "capacity-heading" },
            h("h2", { id: "capacity-heading" }, "Capacity"),
            h("p", { class: "lede" }, "Allocated (requests) against allocatable over time; the dashed line is the trend carried forward to where allocation runs out."),
            h("div", { class: "charts" }, cpu.el, memory.el)),
          h("section", { "aria-labelledby": "objects-heading" }, h("h2", { id: "objects-heading" }, "Objects"), objects.box, pager.el),
        );
      },
      async refresh() {
        const encoded = encodeURIComponent(name);
        const [c, points, list] = await Promise.all([
          api(`/api/v1/clusters/${segment(name)}`),
          history(),
          api(`/api/v1/objects?cluster=${encoded}&limit=${PAGE}${pager.query()}`),
        ]);
        const s = c.summary || {};
        const amounts = (key) => s[key] || {};
        const nodes = s.nodes || {};
        const pods = s.pods || {};
        const rows = [
          ["State", badge(c.state)],
          ["Health", [badge(c.health), " ", c.health_reason]],
          ["Connected", c.connected ? `yes, for ${duration(since(c.connected_since))}` : "no"],
          ["Last heartbeat", ago(c.last_heartbeat)],
          ["Agent", c.agent_version || "–"],
          ["Session", c.session || "–"],
          ["Clock skew", c.clock_skew_ms === null || c.clock_skew_ms === undefined ? "–" : `${c.clock_skew_ms} ms`],
          ["SyncTarget", c.placement && c.placement.syncTarget ? `${c.placement.syncTarget.name} in ${c.placement.syncTarget.workspace}` : "none (the cluster may report nothing)"],
          ["Placed objects", c.placement ? c.placement.objects : "–"],
          ["Objects reported", `${c.objects} (${c.held} held until placement can judge them)`],
          ["Nodes", `${nodes.ready || 0} ready of ${nodes.total || 0}${nodes.cordoned ? `, ${nodes.cordoned} cordoned` : ""}`],
          ["Pods", `${pods.running || 0} running, ${pods.pending || 0} pending, ${pods.failed || 0} failed`],
          ["Watches", (s.watches || []).map((w) => `${w.resource}: ${w.ready ? "listed" : "not listed"}, ${w.objects} objects${w.error ? ` (${w.error})` : ""}`).join("; ") || "–"],
          ["CPU", [bar(c.allocation && c.allocation.cpu, "CPU allocated"), ` ${cores(amounts("requests").cpu_millis || 0)} of ${cores(amounts("allocatable").cpu_millis || 0)} cores allocated`]],
          ["Memory", [bar(c.allocation && c.allocation.memory, "memory allocated"), ` ${bytes(amounts("requests").memory_bytes || 0)} of ${bytes(amounts("allocatable").memory_bytes || 0)} allocated`]],
        ];
        record.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
        heading.replaceChildren(`Cluster ${name} `, badge(c.health));
        cpu.update(points);
        memory.update(points);
        const items = list.items || [];
        syncRows(objects.body, items, objectPath, (o) => {
          const entry = (o.clusters || {})[name] || {};
          return [
            h("th", { scope: "row", dataset: { field: "name" } }, objectLink(o)),
            td("kind", o.kind),
            td("workspace", o.workspace),
            td("status", statusLine(entry.status)),
            td("observed", entry.observed_at_ms ? `${duration(Math.max(0, Date.now() + hubSkewMs - entry.observed_at_ms))} ago` : "–", { class: "wide-only" }),
          ];
        }, (o) => ({ objectName: o.name }));
        emptyRow(objects.body, 5, "The cluster reports no objects.");
        pager.update(list, items.length);
      },
    };
  }

  /** Every object: which clusters report it and the merged status. */
  function objectsView() {
    const pager = new Pager(() => refreshNow());
    const objects = table("objects", "Objects the clusters report: each with the status KCP is given.", [
      ["Object"], ["Kind"], ["Workspace"], ["Clusters"], ["Merged status"],
    ]);
    return {
      name: "objects",
      title: "Objects",
      mount(root) {
        root.append(
          h("h1", { tabindex: -1 }, "Objects"),
          h("p", { class: "lede" }, "Select an object to see each cluster's status beside the merged one."),
          objects.box, pager.el,
        );
      },
      async refresh() {
        const list = await api(`/api/v1/objects?limit=${PAGE}${pager.query()}`);
        const items = list.items || [];
        syncRows(objects.body, items, objectPath, (o) => [
          h("th", { scope: "row", dataset: { field: "name" } }, objectLink(o)),
          td("kind", o.kind),
          td("workspace", o.workspace),
          td("clusters", Object.keys(o.clusters || {}).join(", ")),
          td("merged", statusLine(o.desired_status)),
        ], (o) => ({ objectName: o.name }));
        emptyRow(objects.body, 5, "No cluster reports an object yet.");
        pager.update(list, items.length);
      },
    };
  }

  function conflictCells(object, c, withEnd) {
    const cells = [
      h("th", { scope: "row", dataset: { field: "object" } }, objectLink(object)),
      td("type", c.type),
      td("subject", c.subject),
      td("clusters", (c.clusters || []).join(", ")),
      td("strategy", c.strategy),
      td("resolved", c.resolved_by || "open"),
      td("since", ago(c.since), { title: c.since }),
    ];
    if (withEnd) {
      const lasted = Date.parse(c.ended) - Date.parse(c.since);
      cells.push(td("ended", ago(c.ended), { title: c.ended }), td("lasted", isNaN(lasted) ? "–" : duration(lasted)));
    }
    cells.push(td("message", c.message, { class: "wide-only" }));
    return cells;
  }

  const conflictColumns = (withEnd) => [
    ["Object"], ["Type"], ["Subject"], ["Clusters"], ["Strategy"], ["Resolved by"], ["Began"],
    ...(withEnd ? [["Ended"], ["Lasted"]] : []), ["Message", { class: "wide-only" }],
  ];

  /** One object: each cluster's status beside the merged one, its conflicts. */
  function objectView(path) {
    const heading = h("h1", { tabindex: -1 }, path.split("/").slice(-1)[0]);
    const lede = h("p", { class: "lede" });
    const compare = h("div", { class: "table-scroll" });
    const now = table("object-conflicts", "Conflicts of the merge now.", conflictColumns(false));
    const past = table("object-history", "Conflicts of this object that ended, newest first.", conflictColumns(true));
    return {
      name: "object",
      title: "Object",
      mount(root) {
        root.append(
          heading, lede,
          h("section", { "aria-labelledby": "compare-heading" }, h("h2", { id: "compare-heading" }, "Status by cluster"), compare),
          h("section", { "aria-labelledby": "now-heading" }, h("h2", { id: "now-heading" }, "Conflicts"), now.box),
          h("section", { "aria-labelledby": "past-heading" }, h("h2", { id: "past-heading" }, "History"), past.box),
        );
      },
      async refresh() {
        const o = await api(`/api/v1/objects/${path}`);
        heading.textContent = `${o.kind} ${objectName(o)}`;
        lede.textContent = `Workspace ${o.workspace} · ${o.resource}${o.group ? `.${o.group}` : ""}/${o.version} · merge strategy ${o.strategy}`;
        const clusters = Object.keys(o.clusters || {});
        const merged = leaves(o.merged_status, "", new Map());
        const perCluster = clusters.map((c) => leaves(o.clusters[c].status, "", new Map()));
        const fields = Array.from(new Set([...merged.keys(), ...perCluster.flatMap((m) => Array.from(m.keys()))])).sort();
        const columns = [["Field"], ...clusters.map((c) => [c]), ["Merged (KCP)"]];
        const t = table("object-clusters", "Each cluster's status beside the merged status the hub writes to KCP; fields on which the clusters disagree are marked.", columns);
        const info = (label, pick) =>
          h("tr", {}, h("th", { scope: "row" }, label), clusters.map((c) => h("td", {}, pick(o.clusters[c], c))), h("td", {}, "–"));
        t.body.append(
          info("Cluster link", (e) => badge(e.state)),
          info("Observed", (e) => `${duration(e.age_ms)} ago`),
          info("Generation (observed)", (e) => `${e.generation ?? "–"} (${e.observed_generation ?? "–"})`),
        );
        for (const field of fields) {
          const want = merged.get(field);
          const reported = perCluster.map((m) => m.get(field));
          // Summed and merged fields differ from each cluster's by design;
          // what an operator looks for is clusters that disagree.
          const disagree = new Set(reported).size > 1;
          t.body.append(
            h("tr", { dataset: { statusField: field }, class: disagree ? "disagree" : null },
              h("th", { scope: "row" }, h("code", {}, field)),
              reported.map((got) =>
                h("td", { class: disagree ? "differs" : null }, got === undefined ? "–" : got,
                  disagree ? h("span", { class: "visually-hidden" }, " (the clusters disagree)") : null)),
              h("td", {}, want === undefined ? "–" : want)),
          );
        }
        if (fields.length === 0) t.body.append(h("tr", {}, h("td", { colspan: clusters.length + 2 }, "No status reported.")));
        // Rebuilt whole (the columns follow the clusters); the reader's
        // sideways scroll stays where it was.
        const scrolled = compare.scrollLeft;
        compare.replaceChildren(t.table);
        compare.scrollLeft = scrolled;
        const present = (o.conflicts || []).map((c) => {
          const recorded = (o.recorded_conflicts || []).find((r) => r.type === c.type && r.subject === c.subject);
          return { ...c, strategy: recorded ? recorded.strategy : o.strategy, since: recorded && recorded.since };
        });
        syncRows(now.body, present, (c) => `${c.type}/${c.subject}`, (c) => conflictCells(o, c, false));
        emptyRow(now.body, 8, "The clusters agree.");
        syncRows(past.body, o.history || [], (c) => `${c.type}/${c.subject}/${c.ended}`, (c) => conflictCells(o, c, true));
        emptyRow(past.body, 10, "No conflict of this object has ended yet.");
      },
    };
  }

  /** Open conflicts with their strategy, then the ones that ended. */
  function conflictsView() {
    const pager = new Pager(() => refreshNow());
    const open = table("conflicts", "Conflicts now: where clusters disagree and how the hub settles it.", conflictColumns(false));
    const past = table("conflict-history", "Conflicts that ended, newest first.", conflictColumns(true));
    const ended = every(10000, () => api("/api/v1/conflicts/history"));
    return {
      name: "conflicts",
      title: "Conflicts",
      mount(root) {
        root.append(
          h("h1", { tabindex: -1 }, "Conflicts"),
          h("p", { class: "lede" }, "An open conflict has no value the strategy could settle; a resolved one names what settled it."),
          open.box, pager.el,
          h("h2", {}, "History"), past.box,
        );
      },
      async refresh() {
        const [list, history] = await Promise.all([
          api(`/api/v1/conflicts?limit=${PAGE}${pager.query()}`),
          ended(),
        ]);
        const rows = (list.items || []).flatMap((item) => item.conflicts.map((c) => ({ object: item.object, c })));
        syncRows(open.body, rows, (r) => `${objectPath(r.object)}/${r.c.type}/${r.c.subject}`,
          (r) => conflictCells(r.object, r.c, false), (r) => ({ objectName: r.object.name }));
        emptyRow(open.body, 8, "No conflicts: every object's clusters agree.");
        syncRows(past.body, history.items || [], (c) => `${objectPath(c.object)}/${c.type}/${c.subject}/${c.ended}`, (c) => conflictCells(c.object, c, true));
        emptyRow(past.body, 10, "No conflict has ended yet.");
        pager.update(list, rows.length);
      },
    };
  }

  function notFound(hash) {
    return {
      name: "not-found",
      title: "Not found",
      mount(root) {
        root.append(h("h1", { tabindex: -1 }, "Not found"), h("p", {}, "Nothing lives at this address. ", h("a", { href: "#/" }, "Back to the fleet.")));
      },
      async refresh() {},
    };
  }

  // ---- routing and the refresh loop ---------------------------------------

  /** A route's segment as text, or null when it is not one (bad escapes, `.`, `..`). */
  function decoded(raw) {
    try {
      const text = decodeURIComponent(raw);
      return text === "" || text === "." || text === ".." ? null : text;
    } catch {
      return null;
    }
  }

  function viewFor(hash) {
    const route = hash.replace(/^#/, "") || "/";
    if (route === "/") return fleetView();
    if (route === "/objects") return objectsView();
    if (route === "/conflicts") return conflictsView();
    let m = route.match(/^\/clusters\/([^/]+)$/);
    const cluster = m && decoded(m[1]);
    if (cluster !== null && cluster !== undefined) return clusterView(cluster);
    m = route.match(/^\/objects\/([^/]+\/[^/]+\/[^/]+\/[^/]+\/[^/]+)$/);
    if (m) {
      // Re-escaped from the decoded segments: nothing in the address bar
      // reaches the API path but five escaped names.
      const parts = m[1].split("/").map(decoded);
      if (parts.every((p) => p !== null)) return objectView(parts.map(segment).join("/"));
    }
    return notFound(hash);
  }

  let current = null;
  let generation = 0;
  let timer = null;
  let rendered = 0;

  function announce(text) {
    announcer.textContent = text;
  }

  function setError(text) {
    if (errorBox.textContent !== text) errorBox.textContent = text;
  }

  let running = false;
  let again = false;

  /** Reads and renders the current view now, then every POLL_MS. */
  async function refreshNow() {
    clearTimeout(timer);
    if (running) {
      again = true;
      return;
    }
    running = true;
    const mine = generation;
    requests = new AbortController();
    const giveUp = setTimeout(() => requests.abort(), FETCH_TIMEOUT_MS);
    try {
      await current.refresh();
      if (mine === generation) {
        setError("");
        rendered += 1;
        view.dataset.rendered = String(rendered);
        freshness.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      }
    } catch (error) {
      if (mine === generation) {
        const why = error.name === "AbortError" ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : error.message;
        setError(`Could not read the hub API: ${why}. Retrying every ${POLL_MS / 1000} s.`);
      }
    } finally {
      clearTimeout(giveUp);
      running = false;
    }
    if (again || mine !== generation) {
      again = false;
      refreshNow();
    } else if (!document.hidden) {
      timer = setTimeout(refreshNow, POLL_MS);
    }
  }

  function show(focus) {
    generation += 1;
    clearTimeout(timer);
    requests.abort();
    current = viewFor(location.hash);
    view.replaceChildren();
    view.dataset.view = current.name;
    document.title = `${current.title} · Uplink hub`;
    current.mount(view);
    // The section the view belongs to: a cluster's page is part of the fleet.
    const first = (location.hash.replace(/^#\/?/, "").split("/")[0]) || "";
    const section = first === "clusters" ? "" : first;
    for (const link of document.querySelectorAll("nav a")) {
      if (link.getAttribute("href") === `#/${section}`) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (focus) {
      const heading = view.querySelector("h1");
      if (heading) heading.focus();
    }
    refreshNow();
  }

  // Only `#/...` addresses are views; the skip link moves focus instead.
  window.addEventListener("hashchange", () => {
    if (location.hash === "" || location.hash.startsWith("#/")) show(true);
  });
  const skip = document.querySelector(".skip");
  if (skip) {
    skip.addEventListener("click", (event) => {
      event.preventDefault();
      view.focus();
    });
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshNow();
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => refreshNow(), 250);
  });
  show(false);
})();

/* pytest-wec: the live dashboard and report.html (uPlot charts, plain DOM tables). */
(function () {
  "use strict";
  var WEC = (window.WEC = { charts: {}, data: null });
  var ACME = "urn:ietf:params:acme:error:";
  var PALETTE = { p50: "#2f5bea", p95: "#e08a00", p99: "#c62828", chains: "#2f5bea",
    failed: "#c62828", requests: "#7b8794" };

  // -- small helpers -----------------------------------------------------------------------

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined || v === "") return "-";
    if (typeof v !== "number") return String(v);
    if (!isFinite(v)) return "-";
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    var a = Math.abs(v);
    if (a >= 1000) return v.toLocaleString("en-US", { maximumFractionDigits: 0 });
    return v.toFixed(a >= 10 ? 1 : 2);
  }

  function clock(s) {
    s = Math.max(Math.floor(s || 0), 0);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    var mm = (h ? String(m).padStart(2, "0") : String(m)) + "m" + String(r).padStart(2, "0") + "s";
    return h ? h + "h" + mm : mm;
  }

  function utc(epoch) {
    if (typeof epoch !== "number") return "-";
    return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function shortType(t) {
    t = String(t || "");
    return t.indexOf(ACME) === 0 ? t.slice(ACME.length) : t;
  }

  function byId(id) { return document.getElementById(id); }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // A table: columns [label, key or function, numeric?]; rows of objects.
  function table(container, columns, rows, opts) {
    opts = opts || {};
    clear(container);
    if (!rows.length) {
      container.appendChild(el("p", "empty", opts.empty || "none"));
      return;
    }
    var t = el("table"), thead = el("thead"), hr = el("tr"), tbody = el("tbody");
    columns.forEach(function (c) { hr.appendChild(el("th", c[2] ? "num" : "", c[0])); });
    thead.appendChild(hr);
    rows.forEach(function (row) {
      var tr = el("tr");
      columns.forEach(function (c) {
        var v = typeof c[1] === "function" ? c[1](row) : row[c[1]];
        var td = el("td", c[3] || (c[2] ? "num" : ""));
        if (v instanceof Node) td.appendChild(v); else td.textContent = c[2] ? fmt(v) : (v == null ? "-" : String(v));
        tr.appendChild(td);
      });
      if (opts.onclick) {
        tr.className = "pick";
        tr.addEventListener("click", function () { opts.onclick(row); });
      }
      if (row._all) tr.className += " all";
      tbody.appendChild(tr);
    });
    t.appendChild(thead);
    t.appendChild(tbody);
    var wrap = el("div", "scroll");
    wrap.appendChild(t);
    container.appendChild(wrap);
  }

  function cards(container, items) {
    clear(container);
    items.forEach(function (it) {
      var c = el("div", "card" + (it[2] ? " bad" : ""));
      c.appendChild(el("div", "v", typeof it[1] === "number" ? fmt(it[1]) : (it[1] == null ? "-" : it[1])));
      c.appendChild(el("div", "k", it[0]));
      container.appendChild(c);
    });
  }

  // -- series ------------------------------------------------------------------------------

  // Keeps summary.json's "timeline" (one entry a bucket: "t" its first second, "dt" its
  // width, 1 for the last 15 minutes, coarser before; no "dt": 1) and "timeline_by" (columns
  // per chain and endpoint); a live update replaces everything from its "timeline_from" on.
  function Series() { this.timeline = []; this.by = { chains: {}, endpoints: {} }; }

  Series.prototype.merge = function (from, timeline, by) {
    var tl = this.timeline;
    while (tl.length && tl[tl.length - 1].t >= from) tl.pop();
    (timeline || []).forEach(function (e) { tl.push(e); });
    var mine = this.by;
    ["chains", "endpoints"].forEach(function (g) {
      var group = mine[g];
      Object.keys(group).forEach(function (name) {
        var cols = group[name], keep = 0;
        while (keep < cols.t.length && cols.t[keep] < from) keep++;
        Object.keys(cols).forEach(function (k) { cols[k].length = keep; });
      });
      var incoming = (by && by[g]) || {};
      Object.keys(incoming).forEach(function (name) {
        var cols = group[name] || (group[name] = { t: [], count: [], failed: [], p50: [], p95: [], p99: [] });
        Object.keys(cols).forEach(function (k) {
          (incoming[name][k] || []).forEach(function (v) { cols[k].push(v); });
        });
      });
    });
  };

  // Counts per second: a bucket's counts over its width ("dt" seconds).
  Series.prototype.throughput = function () {
    var tl = this.timeline;
    var rate = function (k) { return tl.map(function (e) { return e[k] / (e.dt || 1); }); };
    return [tl.map(function (e) { return e.t; }), rate("chains"), rate("failed"), rate("requests")];
  };

  // what: "chains", "requests", "chain:NAME" or "endpoint:NAME"
  Series.prototype.latency = function (what) {
    var tl = this.timeline, xs = tl.map(function (e) { return e.t; });
    if (what === "chains" || what === "requests") {
      var key = what === "chains" ? "chain_ms" : "request_ms";
      var n = what === "chains" ? "chains" : "requests";
      var pick = function (p) { return tl.map(function (e) { return e[n] ? e[key][p] : null; }); };
      return [xs, pick("p50"), pick("p95"), pick("p99")];
    }
    var cut = what.indexOf(":");
    var group = what.slice(0, cut) === "chain" ? "chains" : "endpoints";
    var cols = this.by[group][what.slice(cut + 1)];
    var out = [xs, xs.map(function () { return null; }), xs.map(function () { return null; }),
      xs.map(function () { return null; })];
    if (!cols) return out;
    var index = {};
    xs.forEach(function (t, i) { index[t] = i; });
    cols.t.forEach(function (t, j) {
      var i = index[t];
      if (i === undefined) return;
      out[1][i] = cols.p50[j]; out[2][i] = cols.p95[j]; out[3][i] = cols.p99[j];
    });
    return out;
  };

  // -- charts ------------------------------------------------------------------------------

  function makeChart(box, series, axes, data) {
    var width = Math.max(box.clientWidth || 600, 300);
    var opts = { width: width, height: 260, scales: { x: { time: false } }, series: series,
      axes: axes, legend: { live: true }, cursor: { drag: { x: true, y: false } } };
    clear(box);
    var u = new uPlot(opts, data, box);
    window.addEventListener("resize", function () {
      u.setSize({ width: Math.max(box.clientWidth || 600, 300), height: 260 });
    });
    return u;
  }

  function throughputChart(box, series) {
    return makeChart(box, [
      { label: "second" },
      { label: "chains/s", stroke: PALETTE.chains, width: 2 },
      { label: "failed chains/s", stroke: PALETTE.failed, width: 1 },
      { label: "requests/s", stroke: PALETTE.requests, width: 1, scale: "req" },
    ], [
      { label: "elapsed (s)" },
      { label: "chains/s", scale: "y" },
      { label: "requests/s", scale: "req", side: 1, grid: { show: false } },
    ], series.throughput());
  }

  function latencyChart(box, series, what) {
    var ms = { value: function (u, v) { return v == null ? "-" : fmt(v) + " ms"; } };
    return makeChart(box, [
      { label: "second" },
      Object.assign({ label: "p50", stroke: PALETTE.p50, width: 2, spanGaps: false }, ms),
      Object.assign({ label: "p95", stroke: PALETTE.p95, width: 2, spanGaps: false }, ms),
      Object.assign({ label: "p99", stroke: PALETTE.p99, width: 2, spanGaps: false }, ms),
    ], [{ label: "elapsed (s)" }, { label: "latency (ms)" }], series.latency(what));
  }

  // The latency chart's choice: every chain, every request, or one chain or endpoint.
  function fillSelect(select, data) {
    var want = ["chains", "requests"]
      .concat(Object.keys(data.chains || {}).map(function (n) { return "chain:" + n; }))
      .concat(Object.keys(data.endpoints || {}).map(function (n) { return "endpoint:" + n; }));
    var have = Array.prototype.map.call(select.options, function (o) { return o.value; });
    if (have.join("\n") === want.join("\n")) return;
    var current = select.value || "chains";
    clear(select);
    want.forEach(function (v) {
      var label = v === "chains" ? "all chains" : v === "requests" ? "all requests" : v.replace(":", ": ");
      var o = el("option", "", label);
      o.value = v;
      select.appendChild(o);
    });
    select.value = want.indexOf(current) >= 0 ? current : "chains";
  }

  // Charts, their selector and the chain and endpoint tables, for the report and the dashboard.
  function Views(series) {
    this.series = series;
    this.select = byId("latency-of");
    var self = this;
    this.select.addEventListener("change", function () { self.redrawLatency(); });
  }

  Views.prototype.draw = function (data) {
    this.data = data;
    fillSelect(this.select, data);
    if (!WEC.charts.throughput) {
      WEC.charts.throughput = throughputChart(byId("chart-throughput"), this.series);
      WEC.charts.latency = latencyChart(byId("chart-latency"), this.series, this.select.value);
    } else {
      WEC.charts.throughput.setData(this.series.throughput());
      WEC.charts.latency.setData(this.series.latency(this.select.value));
    }
    var self = this;
    var lat = function (k) { return function (r) { return r.latency_ms ? r.latency_ms[k] : null; }; };
    var cols = [["count", "count", 1], ["ok", "ok", 1], ["failed", "failed", 1], ["per s", "per_s", 1],
      ["mean ms", lat("mean"), 1], ["p50 ms", lat("p50"), 1], ["p95 ms", lat("p95"), 1],
      ["p99 ms", lat("p99"), 1], ["max ms", lat("max"), 1]];
    var rows = function (obj, key) {
      var out = Object.keys(obj || {}).map(function (n) { return Object.assign({ name: n }, obj[n]); });
      var all = (data.overall || {})[key];  // every chain (or request) together
      if (all && out.length) out.push(Object.assign({ name: "all " + key, _all: key }, all));
      return out;
    };
    // the open model: latency from the intended start too, where it differs (coordinated omission)
    var sched = function (k) { return function (r) { return r.latency_from_scheduled_ms ? r.latency_from_scheduled_ms[k] : null; }; };
    var chainCols = cols;
    var differs = Object.keys(data.chains || {}).some(function (n) {
      var c = data.chains[n], f = c.latency_from_scheduled_ms;
      return f && ["p50", "p95", "p99", "max"].some(function (k) { return f[k] !== c.latency_ms[k]; });
    });
    if (differs) chainCols = cols.concat([["p50 ms from intended start", sched("p50"), 1],
      ["p95 ms from intended start", sched("p95"), 1], ["p99 ms from intended start", sched("p99"), 1],
      ["max ms from intended start", sched("max"), 1]]);
    table(byId("table-chains"), [["chain", "name"]].concat(chainCols), rows(data.chains, "chains"),
      { empty: "no chain finished yet",
        onclick: function (r) { self.choose(r._all || "chain:" + r.name); } });
    table(byId("table-endpoints"), [["endpoint", "name"]].concat(cols), rows(data.endpoints, "requests"),
      { empty: "no request yet",
        onclick: function (r) { self.choose(r._all || "endpoint:" + r.name); } });
    // summary.json "connections": the connections the requests opened (not in their latency)
    var conn = data.connections || {};
    table(byId("table-connections"), [["connections opened", "opened", 1],
      ["p50 ms to open", lat("p50"), 1], ["p95 ms to open", lat("p95"), 1],
      ["p99 ms to open", lat("p99"), 1], ["max ms to open", lat("max"), 1]],
      conn.opened ? [conn] : [], { empty: "" });
    phaseTables(data);
    table(byId("table-errors"), [["count", "count", 1], ["type", function (r) { return shortType(r.type); }],
      ["chain", "chain"], ["endpoint", function (r) { return r.endpoint || "(chain)"; }],
      ["example", "example", 0, "example"]], data.errors || [], { empty: "no errors" });
  };

  // summary.json "phases" (over all chains, then each chain's own) and "deviations"
  function phaseTables(data) {
    var timed = [], counted = [];
    var add = function (chain, phases) {
      Object.keys(phases || {}).forEach(function (n) {
        var row = Object.assign({ name: n, chain: chain }, phases[n]);
        (row.values ? counted : timed).push(row);
      });
    };
    add("all chains", data.phases);
    Object.keys(data.chains || {}).forEach(function (c) { add(c, data.chains[c].phases); });
    var ms = function (k) { return function (r) { return r.latency_ms[k]; }; };
    var val = function (k) { return function (r) { return r.values[k]; }; };
    table(byId("table-phases"), [["phase", "name"], ["chain", "chain"], ["count", "count", 1],
      ["mean ms", ms("mean"), 1], ["p50 ms", ms("p50"), 1], ["p90 ms", ms("p90"), 1],
      ["p95 ms", ms("p95"), 1], ["p99 ms", ms("p99"), 1], ["max ms", ms("max"), 1]], timed,
      { empty: "no phase yet" });
    table(byId("table-phase-counts"), [["phase", "name"], ["chain", "chain"], ["unit", "unit"],
      ["count", "count", 1], ["mean", val("mean"), 1], ["p50", val("p50"), 1], ["p95", val("p95"), 1],
      ["p99", val("p99"), 1], ["max", val("max"), 1]], counted, { empty: "" });
    var devs = data.deviations || {};
    var section = byId("deviations-section");
    if (section) section.hidden = !Object.keys(devs).length;
    table(byId("table-deviations"), [["count", "count", 1], ["kind", "kind"], ["chain", "chain"],
      ["example", "example", 0, "example"]],
      Object.keys(devs).map(function (k) { return Object.assign({ kind: k }, devs[k]); }),
      { empty: "none" });
    rateLimitTables(data.rate_limits);
  }

  // summary.json "rate_limits": requests refused by endpoint and limit, and the waits
  function rateLimitTables(rl) {
    var section = byId("rate-limits-section");
    if (!section) return;
    rl = rl || {};
    var retry = rl.retry_waits || {}, users = rl.user_waits || {};
    section.hidden = !(rl.refused || retry.count || users.count);
    if (section.hidden) return;
    var chains = rl.chains_refused || {};
    cards(byId("rate-limit-waits"), [["requests refused", rl.refused, rl.refused > 0],
      ["chains refused", Object.keys(chains).reduce(function (n, c) { return n + chains[c]; }, 0)],
      ["retry sleeps", retry.count], ["retry sleep s", retry.seconds],
      ["user waits", users.count], ["user wait s", users.seconds]]);
    var rows = [];
    Object.keys(rl.by_endpoint || {}).forEach(function (ep) {
      var by = rl.by_endpoint[ep].by_limit || {};
      Object.keys(by).forEach(function (lim) { rows.push({ endpoint: ep, limit: lim, count: by[lim] }); });
    });
    table(byId("table-rate-limits"), [["count", "count", 1], ["endpoint", "endpoint"], ["limit", "limit"]],
      rows, { empty: "no request refused" });
  }

  Views.prototype.choose = function (what) {
    this.select.value = what;
    this.redrawLatency();
    byId("chart-latency").scrollIntoView({ block: "nearest" });
  };

  Views.prototype.redrawLatency = function () {
    WEC.charts.latency.setData(this.series.latency(this.select.value));
  };

  function totalsCards(container, t, extra) {
    cards(container, [
      ["chains", t.chains], ["chains ok", t.chains_ok], ["chains failed", t.chains_failed, t.chains_failed > 0],
      ["chains/s", t.chains_per_s], ["requests", t.requests],
      ["requests failed", t.requests_failed, t.requests_failed > 0], ["requests/s", t.requests_per_s],
      ["certificates", t.certificates_issued], ["dropped starts", t.dropped_starts, t.dropped_starts > 0],
      ["cancelled", t.cancelled], ["skipped", t.skipped], ["results lost", t.results_lost, t.results_lost > 0],
    ].concat(extra || []));
  }

  function stateCards(container, state, gen) {
    state = state || {};
    gen = gen || {};
    var lag = gen.schedule_lag_ms || {};
    cards(container, [["accounts", state.accounts], ["authorizations", state.authorizations],
      ["certificates", state.certificates], ["revoked", state.revoked],
      ["max loop lag ms", gen.max_loop_lag_ms, gen.max_loop_lag_ms > 100],
      ["max cpu %", gen.max_cpu_pct, gen.max_cpu_pct > 90],
      ["schedule lag p99 ms", lag.p99], ["generator cpu s", gen.cpu_s]]);
  }

  function warningsList(container, items) {
    clear(container);
    if (!items || !items.length) {
      container.appendChild(el("p", "empty", "none"));
      return;
    }
    var ul = el("ul", "warnings");
    items.forEach(function (w) { ul.appendChild(el("li", "", w)); });
    container.appendChild(ul);
  }

  // CA events (summary.json "ca_events"): what the embedded Pebble's doctor found and did.
  function eventLine(e) {
    var failed = e.chains_failed ? "; " + fmt(e.chains_failed) + " chains failed because of it" : "";
    return "CA event: " + e.kind + " at " + clock(e.at_s) + ": " + e.diagnosis + failed;
  }

  // stack events (summary.json "stack_events"): a part of our own stack that died.
  function stackLine(e) {
    var back = e.recovered ? "restarted in " + fmt(e.restart_s) + " s" : "not recovered";
    var failed = e.chains_failed ? "; " + fmt(e.chains_failed) + " chains failed because of it" : "";
    return "stack event: " + e.part + " " + e.how + " at " + clock(e.at_s) + ", " + back + failed;
  }

  function stackTable(section, container, events) {
    section.hidden = !events.length;
    table(container, [["at", function (e) { return clock(e.at_s); }], ["part", "part"],
      ["how", "how"], ["recovered", function (e) { return e.recovered ? "yes" : "no"; }],
      ["restart s", "restart_s", 1], ["chains failed", "chains_failed", 1],
      ["log ends", "log_tail", 0, "example"]], events);
  }

  function causeCards(by) {
    if (!by) return [];
    return [["failed: CA answer", by.ca_answer], ["failed: CA event", by.ca_event, by.ca_event > 0],
      ["failed: stack event", by.stack_event, by.stack_event > 0],
      ["failed: no answer", by.no_answer], ["failed: ours", by.ours, by.ours > 0]];
  }

  function eventsTable(section, container, events) {
    section.hidden = !events.length;
    table(container, [["at", function (e) { return clock(e.at_s); }], ["kind", "kind"],
      ["diagnosis", "diagnosis", 0, "example"], ["in flight", "in_flight", 1],
      ["chains failed", "chains_failed", 1], ["lost", "lost", 0, "example"],
      ["dump", "dump"]], events);
  }

  // -- report.html -------------------------------------------------------------------------

  WEC.report = function (payload) {
    var s = payload.summary, run = s.run || {};
    WEC.data = s;
    var series = new Series();
    series.merge(0, s.timeline || [], s.timeline_by || {});
    WEC.series = series;
    var target = run.model === "open" ? "rate " + fmt(run.rate) + "/s" : "load " + fmt(run.load);
    if ((s.controls || []).some(function (c) { return c.target != null; })) target += " (changed live)";
    byId("run-meta").textContent = [
      run.id ? "run " + run.id : "run", utc(run.started) + " .. " + utc(run.ended),
      clock(run.duration_s), run.model + " model", target, fmt(run.workers) + " worker(s)",
      run.directory || ""].filter(Boolean).join("  ·  ");
    totalsCards(byId("totals"), s.totals || {}, causeCards(s.failed_by_cause));
    eventsTable(byId("ca-events-section"), byId("table-ca-events"), s.ca_events || []);
    stackTable(byId("stack-events-section"), byId("table-stack-events"), s.stack_events || []);
    var th = s.thresholds || [];
    byId("thresholds-section").hidden = !th.length;
    table(byId("table-thresholds"), [["threshold", "expr"], ["value", "value", 1],
      ["result", function (r) { return el("span", r.ok ? "pass" : "fail", r.ok ? "pass" : "FAIL"); }]], th);
    warningsList(byId("warnings"), s.warnings);
    var controls = s.controls || [];
    byId("controls-section").hidden = !controls.length;
    table(byId("table-controls"), [["at (s)", "at_s", 1], ["from the dashboard", function (r) {
      return r.stop ? "stop" : (run.model === "open" ? "rate " : "load ") + fmt(r.target);
    }]], controls);
    new Views(series).draw(s);
    stateCards(byId("state"), s.state, s.generator);
    var settings = payload.settings || {};
    table(byId("table-settings"), [["setting", "k"], ["value", "v"]],
      Object.keys(settings).map(function (k) { return { k: k, v: settings[k] }; }), { empty: "not known" });
    WEC.ready = true;
  };

  // -- the live dashboard ------------------------------------------------------------------

  WEC.dashboard = function () {
    var token = (/(?:^#|&)token=([^&]*)/.exec(location.hash) || [])[1];
    token = token ? decodeURIComponent(token) : null;
    var series = new Series(), views = null, targetTouched = false;
    WEC.series = series;
    WEC.updates = 0;
    var input = byId("target-value"), msg = byId("control-msg"), stopBtn = byId("stop");
    input.addEventListener("input", function () { targetTouched = true; });

    function say(text, error) {
      msg.textContent = text;
      msg.className = "msg" + (error ? " error" : "");
    }

    function post(path, body) {
      var headers = { "Content-Type": "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      return fetch(path, { method: "POST", headers: headers, body: JSON.stringify(body) })
        .then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (j) {
            if (!r.ok) throw new Error(j.error || r.status + " " + r.statusText);
            return j;
          });
        });
    }

    byId("target-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var value = Number(input.value);
      post("api/target", { value: value }).then(function (j) {
        targetTouched = false;
        say("target set to " + fmt(j.target));
      }, function (e) { say(e.message, true); });
    });

    var armed = null;
    stopBtn.addEventListener("click", function () {
      if (!armed) {
        stopBtn.textContent = "Confirm stop";
        armed = setTimeout(function () { armed = null; stopBtn.textContent = "Stop"; }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      stopBtn.disabled = true;
      post("api/stop", {}).then(function () { say("stopping: chains in flight finish"); },
        function (e) { stopBtn.disabled = false; stopBtn.textContent = "Stop"; say(e.message, true); });
    });

    function render(d) {
      var run = d.run || {};
      WEC.data = d;
      var status = d.ended ? "ended" : d.stopping ? "stopping" : "running";
      var badge = byId("status");
      badge.textContent = status;
      badge.className = "badge " + status;
      byId("run-meta").textContent = ["run " + run.id, run.model + " model",
        clock(d.elapsed_s) + " / " + clock(run.duration_s), fmt(run.workers) + " worker(s)",
        run.directory || ""].filter(Boolean).join("  ·  ");
      var what = run.model === "open" ? "rate (starts/s)" : "load (in flight)";
      byId("target-label").textContent = "target " + what;
      if (!targetTouched && document.activeElement !== input && d.target != null) {
        input.value = String(Math.round(d.target * 1000) / 1000);
      }
      var running = !d.ended && !d.stopping;
      byId("set-target").disabled = !running;
      if (!running) stopBtn.disabled = true;
      var w = d.window || {}, workersTarget = 0;
      (d.workers || []).forEach(function (x) { if (x.state === "running") workersTarget += x.target || 0; });
      cards(byId("live"), [["in flight", d.in_flight], ["target", d.target],
        ["workers' target", Math.round(workersTarget * 1000) / 1000],
        ["chains/s (last " + (w.seconds || 10) + " s)", w.chains_per_s],
        ["p95 ms (last " + (w.seconds || 10) + " s)", w.p95_ms]]);
      byId("live").firstChild.id = "in-flight-card";
      totalsCards(byId("totals"), d.totals || {}, causeCards(d.failed_by_cause));
      stateCards(byId("state"), d.state, d.generator);
      table(byId("table-workers"), [["worker", "worker"], ["state", "state"], ["in flight", "in_flight", 1],
        ["target", "target", 1], ["loop lag ms", "loop_lag_ms", 1], ["cpu %", "cpu_pct", 1],
        ["sent", "sent", 1], ["dropped", "dropped", 1], ["dropped starts", "dropped_starts", 1],
        ["heard s ago", "age_s", 1]], d.workers || [], { empty: "no worker reported yet" });
      warningsList(byId("warnings"), (d.ca_events || []).map(eventLine)
        .concat((d.stack_events || []).map(stackLine)).concat(d.warnings || []));
      views = views || new Views(series);
      views.draw(d);
    }

    function connect() {
      var url = "api/events" + (token ? "?token=" + encodeURIComponent(token) : "");
      var es = new EventSource(url);
      es.addEventListener("snapshot", function (ev) {
        var d = JSON.parse(ev.data);
        series.merge(d.timeline_from || 0, d.timeline, d.timeline_by);
        render(d);
        WEC.updates += 1;
        WEC.ready = true;
      });
      es.onerror = function () {
        if (WEC.data && WEC.data.ended) { es.close(); return; }
        var badge = byId("status");
        badge.textContent = "reconnecting";
        badge.className = "badge offline";
      };
    }
    connect();
  };
})();

"use strict";
// The dashboard: polls the API and redraws in place. No framework, no external files.
(function () {
  // The API's prefix (API Gateway's stage), from the page's own path. Leading slashes collapsed:
  // "//host/dashboard/" would make "//host" a prefix, and every link and fetch another site's.
  var BASE = location.pathname.replace(/^\/+/, "/").replace(/\/dashboard\/?(index\.html)?$/, "");
  // The history holds a point a minute: asked once a minute (it was every 30 s, 1.25 MB a time at
  // 1,000 pools). A poll that fails waits twice as long as the last, up to MAX_BACKOFF, or as long
  // as the API's Retry-After says (429, 503); none runs while the tab is hidden. Each wait after a
  // failure is drawn between half of it and all of it (jitter): every open page lost the API at
  // the same moment, and without it they all came back in the same second, again and again. At
  // most a minute (it was 5): the page came back up to 5 minutes after the API did.
  var STATUS_EVERY = 5000, HISTORY_EVERY = 60000, SUMMARY_EVERY = 60000, STALE_AFTER = 20000;
  var MAX_BACKOFF = 60000;
  // How long a poll waits for its whole answer before it gives up and counts as failed. API
  // Gateway answers within 29 s, a 503 or 504 if the API cannot: an answer still missing past that
  // is on a connection that went dead without a word (a VPN or NAT dropping it, a laptop waking),
  // where the browser waits for TCP to give up, some 15 minutes. The poll waited as long: its feed
  // asked nothing more and the badge said "stale" without a reason, the API long back.
  var ANSWER_WITHIN = 30000;
  // The table holds at most MAX_ROWS rows, the first in the chosen order of those the filter
  // matches; the alerts name at most MAX_NAMED pools each. At 10,000 pools (the most a config
  // may have) the page built 220,000 elements: 9 s before the first row, then an 11 s freeze,
  // and a fresh fleet's 10,000 empty pools were a wall of names above the table.
  var MAX_ROWS = 1000, MAX_NAMED = 30;
  var collator = new Intl.Collator();  // one, for every sort: localeCompare builds one per call
  var byName = collator.compare;
  var state = { status: null, summary: null, history: null, hours: 1 };
  // Each feed the page shows: when it last answered, whether it fails now and why, and how old
  // its answer may be before the live badge calls it stale (a poll and 20 s). The badge said
  // "live" from /status alone: with the history or the summaries failing (Redis down, 503) the
  // graphs and the clone and boot times stayed as they were, and the badge said "live" throughout.
  var feeds = {
    status: { what: "the pools", staleAfter: STALE_AFTER, lastOk: 0, failing: false, problem: "" },
    history: { what: "the graphs", staleAfter: HISTORY_EVERY + STALE_AFTER, lastOk: 0, failing: false, problem: "" },
    summary: { what: "the clone and boot times", staleAfter: SUMMARY_EVERY + STALE_AFTER, lastOk: 0, failing: false,
      problem: "" }
  };
  var $ = function (id) { return document.getElementById(id); };

  function url(path) { return BASE + "/" + path; }

  // What an answer holds under a pool's name, and nothing else: a pool may be named "constructor",
  // "toString" or "valueOf", which a plain object lookup finds on Object.prototype when the answer
  // lacks the pool (a feed computed on a config without it yet), and the page then drew a function.
  function own(object, key) {
    return object && Object.prototype.hasOwnProperty.call(object, key) ? object[key] : undefined;
  }

  // maxAge: how old (seconds) an answer the page accepts. Every open page asks the same feeds:
  // the API computes each once for all of them within that time (api/feed_cache.py), where 50
  // open pages of 1,000 pools cost Redis and the API more than the checkouts did.
  // The last answer of each feed and its ETag: the page asks with If-None-Match, and an answer
  // that did not change comes back 304 with no body (api/conditional.py). Resolves to
  // {body, changed}. One kept per feed (``slot``), not per path: the history's ranges share
  // one, or each range clicked would keep megabytes for the life of the page. ``cancel`` (an
  // AbortSignal): the page no longer wants the answer; the promise then fails ``superseded``.
  var kept = Object.create(null);
  function getJSON(path, maxAge, slot, cancel) {
    slot = slot || path;
    var headers = { Accept: "application/json" };
    if (maxAge) { headers["Cache-Control"] = "max-age=" + maxAge; }
    var last = kept[slot] && kept[slot].path === path ? kept[slot] : null;
    if (last) { headers["If-None-Match"] = last.etag; }
    var deadline = AbortSignal.timeout(ANSWER_WITHIN);
    function timedOut() {
      var error = new Error(path + ": no answer within " + ANSWER_WITHIN / 1000 + " s");
      error.timedOut = true;
      return error;
    }
    var signal = cancel ? AbortSignal.any([deadline, cancel]) : deadline;
    var asked = fetch(url(path), { headers: headers, cache: "no-store", signal: signal }).then(function (r) {
      if (r.status === 304 && last) { return { body: last.body, changed: false }; }
      if (!r.ok) {
        var error = new Error(path + ": HTTP " + r.status);
        error.status = r.status;
        error.retryAfter = Number(r.headers.get("Retry-After")) || 0;
        // Why, in the API's words (our JSON's error, API Gateway's message), for the badge.
        var json = /^application\/json\b/i.test(r.headers.get("Content-Type") || "");
        return (json ? r.json() : Promise.reject(error)).then(function (body) {
          error.reason = reasonOf(body);
        }, function () { /* no words: the status says it */ }).then(function () { throw error; });
      }
      return r.json().catch(function () {
        // A 200 that is no JSON (a proxy's page, a cut answer): the API was reached, its answer
        // is what failed. It read as "the API is unreachable".
        throw deadline.aborted ? timedOut() : undrawable(path);
      }).then(function (body) {
        var etag = r.headers.get("ETag");
        if (etag) { kept[slot] = { path: path, etag: etag, body: body }; } else { delete kept[slot]; }
        return { body: body, changed: true };
      });
    });
    return asked.catch(function (error) {
      if (cancel && cancel.aborted) {
        var superseded = new Error(path + ": no longer wanted");
        superseded.superseded = true;
        throw superseded;
      }
      throw deadline.aborted && !error.timedOut ? timedOut() : error;
    });
  }

  // An error answer's text, on one line, cut to MAX_REASON characters and isolated (FSI..PDI):
  // a proxy's or a failing API's words, which may hold anything (markup goes in as text; a
  // right-to-left override would reverse the rest of the badge).
  var MAX_REASON = 120;
  function reasonOf(body) {
    var said = isObject(body) && (typeof body.error === "string" ? body.error
      : typeof body.message === "string" ? body.message : "");
    said = said ? said.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u2066-\u2069]+/g, " ").trim() : "";
    if (!said) { return ""; }
    return "\u2068" + (said.length > MAX_REASON ? said.slice(0, MAX_REASON - 1) + "\u2026" : said) + "\u2069";
  }

  // The error of an answer that came but cannot be drawn; its feed is asked afresh next time
  // (an answer kept for its ETag would come back 304 and be taken for good).
  function undrawable(path) {
    var error = new Error(path + ": the answer cannot be drawn");
    error.undrawable = true;
    return error;
  }

  // Draw ``body`` as the state's ``key`` (the page drawn again); when it cannot be drawn, the
  // state keeps the last answer that could, and the error says why. A body of the wrong shape
  // (not a JSON object, /status without its pools) drew nothing, or threw half way, while the
  // badge said "live".
  function draw(key, body, slots, valid) {
    var before = state[key];
    try {
      if (!valid(body)) { throw new Error("not the shape of " + slots); }
      state[key] = body;
      render();
    } catch (cause) {
      state[key] = before;
      [].concat(slots).forEach(function (slot) { delete kept[slot]; });
      try { render(); } catch (again) { /* the last good answer drew before: nothing to add */ }
      throw undrawable(String(slots));
    }
  }

  function isObject(value) { return value !== null && typeof value === "object" && !Array.isArray(value); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  // ``count``: how many the figure is of. The API gives averages to a tenth of a second: clones
  // of 0.01 s averaged 0 and showed "-", as if none ran.
  function seconds(value, count) {
    if (value === undefined || value === null || (value === 0 && !(count > 0))) { return "-"; }
    if (value < 0.1) { return "<0.1 s"; }
    if (value < 60) { return (Math.round(value * 10) / 10) + " s"; }
    return Math.floor(value / 60) + " m " + Math.round(value % 60) + " s";
  }

  function ago(text) {
    if (!text) { return "never"; }
    var when = Date.parse(String(text).replace(" ", "T").replace(" +0000", "Z"));
    if (isNaN(when)) { return text; }
    var s = Math.max(0, (Date.now() - when) / 1000);
    if (s < 60) { return Math.round(s) + " s ago"; }
    if (s < 3600) { return Math.round(s / 60) + " min ago"; }
    if (s < 86400) { return Math.round(s / 3600) + " h ago"; }
    return Math.round(s / 86400) + " d ago";
  }

  function duration(s) {
    s = Math.round(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
  }

  function rangeLabel(hours) { return hours >= 168 ? "7 d" : hours + " h"; }

  // --- live indicator ------------------------------------------------------------------------

  // What is wrong with one of the other feeds ("the graphs: last update 75 s ago; the API
  // answered 503"), or "" while it is fresh or has not answered yet without failing (loading).
  function feedBehind(feed, now) {
    if (!feed.lastOk) { return feed.failing ? feed.what + ": no data; " + feed.problem : ""; }
    if (!feed.failing && now - feed.lastOk <= feed.staleAfter) { return ""; }
    return feed.what + ": last update " + Math.round((now - feed.lastOk) / 1000) + " s ago" +
      (feed.problem ? "; " + feed.problem : "");
  }

  function showLive() {
    var live = $("live"), label = live.querySelector("b"), status = feeds.status;
    var now = Date.now(), age = now - status.lastOk;
    var behind = [feedBehind(feeds.history, now), feedBehind(feeds.summary, now)].filter(Boolean);
    // The pools' badge ("all pools ready", green) greyed while /status is stale: it stayed green
    // through an outage, however old the state it showed.
    var old = !!status.lastOk && (status.failing || age > STALE_AFTER), health = $("health");
    health.classList.toggle("stale", old);
    health.title = old ? "as of " + new Date(status.lastOk).toLocaleTimeString() + ": no newer state of the pools"
      : "state of the pools";
    if (!status.lastOk) {
      live.className = "live " + (status.failing ? "stale" : "wait");
      label.textContent = status.failing ? "no data: " + (status.problem || "the API is unreachable") : "connecting";
    } else if (status.failing || age > STALE_AFTER) {
      live.className = "live stale";
      label.textContent = "stale: last update " + Math.round(age / 1000) + " s ago" + (status.problem ? "; " + status.problem : "");
    } else if (behind.length) {
      live.className = "live stale";
      label.textContent = "partly stale: " + behind.join("; ");
    } else {
      live.className = "live ok";
      label.textContent = "live, updated " + new Date(status.lastOk).toLocaleTimeString();
    }
    label.title = label.textContent;  // whole, where the badge is cut to the window
  }

  // --- totals --------------------------------------------------------------------------------

  function setCard(id, value, of, sub, bad) {
    var card = $(id);
    card.querySelector(".value").textContent = value;
    var ofNode = card.querySelector(".of");
    if (ofNode) { ofNode.textContent = of || ""; }
    card.querySelector(".sub").textContent = sub || "";
    card.classList.toggle("bad", !!bad);
  }

  function renderTotals(status) {
    var cap = status.capacity || {}, queue = status.queue || {};
    setCard("total-ready", cap.current, "/ " + cap.total, (cap.percent || 0) + "% of capacity", cap.total > 0 && cap.current === 0);
    var bar = $("total-ready").querySelector(".bar");
    var pct = cap.total ? Math.min(100, 100 * cap.current / cap.total) : 0;
    bar.firstElementChild.style.width = pct + "%";
    bar.className = "bar" + (pct === 0 && cap.total ? " bad" : pct < 50 ? " warn" : "");
    setCard("total-pending", queue.pending, "", (queue.cloning || 0) + " cloning, " + (queue.booting || 0) + " booting");
    setCard("total-running", queue.running, "", (queue.completed || 0) + " being destroyed");
    setCard("total-requested", queue.requested, "", "not cloning yet");
    var clone = status.clone || { duration: {}, count: {} }, boot = status.boot || { duration: {}, count: {} };
    setCard("total-clone", seconds(clone.duration.average, clone.count.total), "", (clone.count.total || 0) + " clones, max " +
      seconds(clone.duration.max, clone.count.total));
    setCard("total-boot", seconds(boot.duration.average, boot.count.total), "", (boot.count.total || 0) + " boots, max " +
      seconds(boot.duration.max, boot.count.total));
  }

  function renderHeader(status) {
    var s = status.status || {};
    var failing = failingPools(status.pools || {}), waiting = dnsWaitingPools(status.pools || {});
    var health = $("health");
    health.textContent = !s.ok ? (s.empty ? s.empty.length + " empty" : "problem")
      : failing.length ? failing.length + " failing to clone"
      : waiting.length ? waiting.length + " waiting on DNS" : "all pools ready";
    health.className = "badge " + (s.ok && !failing.length && !waiting.length ? "ok" : "bad");
    $("message").textContent = s.message || "";
    $("uptime").textContent = s.uptime !== undefined ? "API up " + duration(s.uptime) : "";
    var alerts = $("alerts");
    alerts.textContent = "";
    if (s.empty && s.empty.length) {
      var empty = el("p");
      empty.appendChild(el("b", null, "Empty pools: "));
      empty.appendChild(document.createTextNode("checkouts from these fail until they refill. "));
      named(empty, s.empty, function (name) { return name; });
      alerts.appendChild(empty);
    }
    if (failing.length) {
      var clones = el("p", "failing");
      clones.appendChild(el("b", null, "Clones failing: "));
      clones.appendChild(document.createTextNode("these pools cannot refill; see the reconcile logs for why. "));
      named(clones, failing, function (name) { return name + " (" + failedInARow(status.pools[name]) + ")"; });
      alerts.appendChild(clones);
    }
    if (waiting.length) {
      var dns = el("p", "dns-waiting");
      dns.appendChild(el("b", null, "Waiting on DNS: "));
      dns.appendChild(document.createTextNode("these pools' new VMs stay pending until their DNS records are made. "));
      named(dns, waiting, function (name) { return name + " (" + vms(status.pools[name].dns_waiting) + ")"; });
      alerts.appendChild(dns);
    }
    alerts.hidden = !alerts.firstChild;
  }

  // The first MAX_NAMED of ``names`` into ``parent``, each as ``text`` gives it, and how many more.
  function named(parent, names, text) {
    names.slice(0, MAX_NAMED).forEach(function (name) { parent.appendChild(el("span", "pool-link", text(name))); });
    if (names.length > MAX_NAMED) {
      parent.appendChild(el("span", "more", "and " + (names.length - MAX_NAMED).toLocaleString() + " more"));
    }
  }

  // How many clones of a failing pool failed in a row, and the kind of the last failure (/status's
  // clone_failure: template, permission, capacity, host...), which says where to look.
  function failedInARow(p) {
    return p.clone_failures + " in a row" + (p.clone_failure ? ", " + p.clone_failure : "");
  }

  // The pools whose clones are failing now (/status's clone_failures: failed in a row since the
  // pool's last good clone), most failures first.
  function failingPools(pools) {
    return Object.keys(pools).filter(function (name) { return pools[name].clone_failures > 0; }).sort(function (a, b) {
      return pools[b].clone_failures - pools[a].clone_failures || byName(a, b);
    });
  }

  // The pools whose new VMs wait on their DNS records (the DNS service refused them or did not
  // answer), the most waiting first: they looked as if they were refilling.
  function dnsWaitingPools(pools) {
    return Object.keys(pools).filter(function (name) { return pools[name].dns_waiting > 0; }).sort(function (a, b) {
      return pools[b].dns_waiting - pools[a].dns_waiting || byName(a, b);
    });
  }

  function vms(count) { return count + (count === 1 ? " VM" : " VMs"); }

  // A reason the API gives (the DNS service's words) as one line of text in a bidi isolate.
  function isolated(text) {
    return "\u2068" + String(text).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u2066-\u2069]+/g, " ") + "\u2069";
  }

  // --- pools ---------------------------------------------------------------------------------

  // The pool's average of the day as the page shows it ("-": none ran today).
  function poolSummary(kind, name) {
    var section = state.summary && state.summary[kind];
    var pool = section && section.duration && own(section.duration.pool, name);
    var count = section && section.count && own(section.count.pool, name);
    return pool ? seconds(pool.average, count ? count.total : pool.total > 0 ? 1 : 0) : "-";
  }

  function sortedNames(pools) {
    var names = Object.keys(pools), how = $("sort").value;
    function fill(p) { return p.max ? p.ready / p.max : 1; }
    function failing(p) { return p.clone_failures > 0 ? 2 : p.dns_waiting > 0 ? 1 : 0; }
    return names.sort(function (a, b) {
      var pa = pools[a], pb = pools[b];
      if (how === "running") { return pb.running - pa.running || byName(a, b); }
      if (how === "problems") { return failing(pb) - failing(pa) || fill(pa) - fill(pb) || byName(a, b); }
      return byName(a, b);
    });
  }

  function sparkline(points, sizes) {
    var svg = svgEl("svg", { viewBox: "0 0 160 28", preserveAspectRatio: "none", "aria-hidden": "true" });
    var values = points.filter(function (v) { return v !== null; });
    if (!values.length) { return svg; }
    var max = Math.max(1, Math.max.apply(null, values), Math.max.apply(null, sizes.filter(function (v) { return v !== null; }).concat([0])));
    function line(series, cls) {
      var coords = [];
      series.forEach(function (v, i) {
        if (v === null) { return; }
        var x = series.length > 1 ? i * 160 / (series.length - 1) : 160;
        coords.push(x.toFixed(1) + "," + (26 - v / max * 24).toFixed(1));
      });
      if (coords.length === 1) { coords.unshift("0," + coords[0].split(",")[1]); }
      svg.appendChild(svgEl("polyline", { "class": cls, points: coords.join(" ") }));
    }
    line(sizes, "size");
    line(points, "ready");
    return svg;
  }

  // Rows are kept by pool and rebuilt only when what they show changed: at 1,000 pools rebuilding
  // every row on each poll (20,000 elements) held the page 0.4-1 s every few seconds, and each
  // keystroke in the filter as long.
  var rows = Object.create(null);  // by pool name: no prototype whose keys a pool's name could hit

  // Each alias in a bidi isolate (<bdi>, and FSI..PDI in the tooltip): a right-to-left override
  // in one alias reversed the display of every alias after it in the cell.
  function aliasList(aliases) {
    var list = el("span", "aliases", "alias: ");
    aliases.forEach(function (alias, index) {
      if (index) { list.appendChild(document.createTextNode(", ")); }
      list.appendChild(el("bdi", null, alias));
    });
    list.title = aliases.map(function (alias) { return "\u2068" + alias + "\u2069"; }).join(", ");
    return list;
  }

  function aliasesOf(p) { return p.alias ? [].concat(p.alias).map(String) : []; }
  function searchText(name, aliases) { return (name + " " + aliases.join(", ")).toLowerCase(); }
  function filterText() { return $("filter").value.trim().toLowerCase(); }

  function buildRow(name, p, aliases, clone, boot, lastBoot, history) {
    var tr = el("tr", "pool");
    tr.dataset.pool = name;
    tr.dataset.search = searchText(name, aliases);
    var empty = p.max > 0 && p.ready === 0, low = p.max > 0 && p.ready < p.max / 2;
    if (empty) { tr.classList.add("empty"); } else if (low) { tr.classList.add("low"); }
    if (p.clone_failures > 0) { tr.classList.add("failing"); } else if (p.dns_waiting > 0) { tr.classList.add("dns"); }

    var nameCell = el("td", "name");
    nameCell.appendChild(el("b", null, name));
    if (aliases.length) { nameCell.appendChild(aliasList(aliases)); }
    // Where the size comes from when it is not simply the config's (docs/sizing.md).
    if (p.size_reason && p.size_reason !== "config") { nameCell.appendChild(el("span", "size-reason", "size: " + p.size_reason)); }
    if (p.clone_failures > 0) { nameCell.appendChild(el("span", "clone-failures", "clones failing: " + failedInARow(p))); }
    if (p.dns_waiting > 0) {
      nameCell.appendChild(el("span", "dns-waiting", "waiting on DNS: " + vms(p.dns_waiting)));
      if (p.dns_waiting_reason) {
        var why = el("span", "dns-reason", isolated(p.dns_waiting_reason));
        why.title = why.textContent;  // whole, where the cell cuts it
        nameCell.appendChild(why);
      }
    }
    tr.appendChild(nameCell);

    var fillCell = el("td", "fill");
    var counts = el("div", "counts");
    var left = el("span");
    left.appendChild(el("span", "ready", p.ready));
    left.appendChild(document.createTextNode(" / "));
    left.appendChild(el("span", "size", p.max));
    counts.appendChild(left);
    counts.appendChild(el("span", "pct", p.max ? Math.round(100 * p.ready / p.max) + "%" : "size 0"));
    fillCell.appendChild(counts);
    var bar = el("div", "bar" + (empty ? " bad" : low ? " warn" : ""));
    var fill = el("span");
    fill.style.width = (p.max ? Math.min(100, 100 * p.ready / p.max) : 0) + "%";
    bar.appendChild(fill);
    fillCell.appendChild(bar);
    tr.appendChild(fillCell);

    tr.appendChild(el("td", "num pending" + (p.pending ? " busy" : ""), p.pending));
    tr.appendChild(el("td", "num running" + (p.running ? " busy" : ""), p.running));
    tr.appendChild(el("td", "num clone" + (clone !== "-" ? "" : " none"), clone));
    tr.appendChild(el("td", "num boot" + (boot !== "-" ? "" : " none"), boot));
    tr.appendChild(el("td", "num last-boot" + (p.lastBoot ? "" : " none"), lastBoot));

    var spark = el("td", "spark");
    if (history) { spark.appendChild(sparkline(history.ready, history.size)); }
    tr.appendChild(spark);
    return tr;
  }

  function applyFilter() {
    var filter = filterText();
    Array.prototype.forEach.call($("pools").children, function (tr) {
      tr.classList.toggle("hidden", !!filter && tr.dataset.search.indexOf(filter) < 0);
    });
  }

  // The pools the table holds, in order: every pool up to MAX_ROWS (the filter hides rows, which
  // keeps a keystroke cheap); past it, the first MAX_ROWS the filter matches (``matching`` of them).
  function tableNames(pools, names) {
    if (names.length <= MAX_ROWS) { return { names: names, matching: names.length }; }
    var filter = filterText();
    if (filter) {
      names = names.filter(function (name) { return searchText(name, aliasesOf(pools[name])).indexOf(filter) >= 0; });
    }
    return { names: names.slice(0, MAX_ROWS), matching: names.length };
  }

  function renderPools(status) {
    var pools = status.pools || {};
    var body = $("pools");
    var all = sortedNames(pools), table = tableNames(pools, all), names = table.names;
    var kept = Object.create(null);
    names.forEach(function (name) {
      var p = pools[name];
      var aliases = aliasesOf(p);
      var clone = poolSummary("clone", name), boot = poolSummary("boot", name), lastBoot = ago(p.lastBoot);
      var history = state.history && own(state.history.pools, name);
      var shown = JSON.stringify([p, aliases, clone, boot, history ? [history.ready, history.size] : null]);
      var row = rows[name];
      if (!row || row.shown !== shown) {
        row = { shown: shown, tr: buildRow(name, p, aliases, clone, boot, lastBoot, history) };
      } else {
        // "12 s ago" moves on with every poll: its text only, not the row.
        var cell = row.tr.querySelector(".last-boot");
        if (cell.textContent !== lastBoot) { cell.textContent = lastBoot; }
      }
      kept[name] = row;
    });
    // Rows no longer held (rebuilt, filtered out past MAX_ROWS, gone from the config) out first;
    // then each row put at its place walking the table once. Indexing body.children after each
    // change walked the table from its start every time: quadratic, 5 s of 10,000 rows.
    Array.prototype.slice.call(body.children).forEach(function (tr) {
      var row = own(kept, tr.dataset.pool);
      if (!row || row.tr !== tr) { body.removeChild(tr); }
    });
    var here = body.firstElementChild;
    names.forEach(function (name) {
      var tr = kept[name].tr;
      if (here === tr) { here = here.nextElementSibling; } else { body.insertBefore(tr, here); }
    });
    rows = kept;
    applyFilter();
    var count = all.length.toLocaleString() + (all.length === 1 ? " pool" : " pools");
    var cut = table.matching > names.length;
    $("pool-count").textContent = cut ? names.length.toLocaleString() + " shown of " + count : count;
    var more = $("pools-more");
    more.hidden = !cut;
    more.textContent = !cut ? "" : "The table holds the first " + names.length.toLocaleString() + " of the " +
      table.matching.toLocaleString() + " pools" + (filterText() ? " the filter matches" : "") +
      ", in the order chosen: type in the filter to find the others.";
  }

  // Past MAX_ROWS pools the filter chooses which rows the table holds: it is drawn again.
  function filterChanged() {
    var pools = state.status && state.status.pools;
    if (pools && Object.keys(pools).length > MAX_ROWS) { renderPools(state.status); } else { applyFilter(); }
  }

  // --- history graph -------------------------------------------------------------------------

  function sumSeries(pools, field, points) {
    var total = [];
    for (var i = 0; i < points; i++) {
      var sum = null;
      Object.keys(pools).forEach(function (name) {
        var v = pools[name][field][i];
        if (v !== null && v !== undefined) { sum = (sum || 0) + v; }
      });
      total.push(sum);
    }
    return total;
  }

  function renderGraph() {
    var graph = $("totals-graph");
    graph.textContent = "";
    var h = state.history;
    if (!h) { return; }
    var fields = ["size", "pending", "running", "ready"];
    var series = {};
    fields.forEach(function (f) { series[f] = sumSeries(h.pools, f, h.points); });
    var all = [].concat(series.size, series.ready, series.running, series.pending).filter(function (v) { return v !== null; });
    var max = Math.max(1, Math.max.apply(null, all.concat([0])));
    for (var g = 1; g <= 3; g++) {
      var y = 170 - g * 160 / 3;
      graph.appendChild(svgEl("line", { "class": "grid", x1: 0, x2: 1000, y1: y, y2: y }));
    }
    if (!all.length) {
      var note = svgEl("text", { x: 500, y: 95, "text-anchor": "middle", "class": "empty-note" });
      note.textContent = "no samples yet: each pool's reconcile records one a minute";
      graph.appendChild(note);
    }
    function coords(values) {
      var out = [];
      values.forEach(function (v, i) {
        if (v === null) { return; }
        out.push((h.points > 1 ? i * 1000 / (h.points - 1) : 1000).toFixed(1) + "," + (170 - v / max * 160).toFixed(1));
      });
      return out;
    }
    var readyCoords = coords(series.ready);
    if (readyCoords.length > 1) {
      var first = readyCoords[0].split(",")[0], last = readyCoords[readyCoords.length - 1].split(",")[0];
      graph.appendChild(svgEl("polygon", { "class": "area", points: first + ",170 " + readyCoords.join(" ") + " " + last + ",170" }));
    }
    fields.forEach(function (f) {
      var c = coords(series[f]);
      if (c.length) { graph.appendChild(svgEl("polyline", { "class": f, points: c.join(" "), "data-points": c.length })); }
    });
    var labels = $("graph-labels");
    labels.textContent = "";
    if (all.length) {
      for (var l = 1; l <= 3; l++) {
        var label = el("span", null, Math.round(max * l / 3 * 10) / 10);
        label.style.top = (100 * (170 - l * 160 / 3) / 180) + "%";
        labels.appendChild(label);
      }
    }
    var from = new Date(h.start * 1000);
    $("graph-from").textContent = state.hours > 24 ? from.toLocaleString() : from.toLocaleTimeString();
    $("graph-max").textContent = h.step > 60 ? "one point per " + Math.round(h.step / 60) + " min" : "one point per minute";
  }

  // --- polling -------------------------------------------------------------------------------

  function render() {
    if (state.status) {
      renderHeader(state.status);
      renderTotals(state.status);
      renderPools(state.status);
    }
    renderGraph();
    showLive();
  }

  // ``poll`` (a promise) noted as ``feed``'s answer or failure, for the live badge; it still
  // fails, for its poller's back-off. A poll the page gave up for a newer one (a range clicked)
  // is neither: the newer one tells.
  function noted(feed, poll) {
    return poll.then(function () {
      feed.lastOk = Date.now();
      feed.failing = false;
      feed.problem = "";
      showLive();
    }, function (error) {
      if (error.superseded) { return; }
      feed.failing = true;
      feed.problem = error.undrawable ? "the API's answer could not be drawn"
        : error.timedOut ? "no answer from the API within " + ANSWER_WITHIN / 1000 + " s"
        : error.status ? "the API answered " + error.status + (error.reason ? ": " + error.reason : "")
        : "the API is unreachable";
      showLive();
      throw error;
    });
  }

  // /status answering again after failing (or at its first answer) is the API back: the other
  // feeds waiting out a back-off are asked at once. They waited up to a minute more (their polls
  // are a minute apart, so their back-off starts there): with Redis paused for a few seconds at
  // the wrong moment, the graphs and the clone and boot times stayed empty or "partly stale" for
  // up to a minute after the pools came back.
  function pollStatus() {
    var wasDown = feeds.status.failing || !feeds.status.lastOk;
    return noted(feeds.status, getJSON("api/v3/status", STATUS_EVERY / 1000 - 1).then(function (status) {
      if (status.changed) {
        draw("status", status.body, "api/v3/status", function (body) { return isObject(body) && isObject(body.pools); });
      }
    })).then(function () {
      if (wasDown) { pollers.forEach(function (p) { p.backOnline(); }); }
    });
  }

  // The history request on its way, if any: a poll (a range clicked) aborts it. Each click
  // started one more while the others still came (a week of 1,000 pools is megabytes each), all
  // computed, sent and parsed, every one but the last thrown away.
  var historyAsking = null;
  function pollHistory() {
    // The feed keeps an answer at most 30 s (api/feed_cache.py).
    var hours = state.hours;
    if (historyAsking) { historyAsking.abort(); }
    var asking = historyAsking = new AbortController();
    var asked = getJSON("dashboard/stats/history?hours=" + hours, 30, "history", asking.signal);
    asked.then(null, function () { /* noted below */ }).then(function () {
      if (historyAsking === asking) { historyAsking = null; }
    });
    return noted(feeds.history, asked.then(function (history) {
      // An answer for the range shown before a click (still on its way when it came) is not drawn.
      if (history.changed && hours === state.hours) {
        draw("history", history.body, "history", function (body) { return isObject(body) && isObject(body.pools); });
      }
    }));  // failing, the graphs keep their last data; the live badge tells
  }

  // Today's clone and boot times per pool, the two sections the page shows: all of /summary also
  // holds the day's tag counts, which anyone may fill (megabytes a day, on every open page).
  function pollSummary() {
    var both = Promise.all([getJSON("api/v3/summary/clone", 30), getJSON("api/v3/summary/boot", 30)]);
    return noted(feeds.summary, both.then(function (answers) {
      if (answers[0].changed || answers[1].changed) {
        var clone = answers[0].body, boot = answers[1].body;
        draw("summary", { clone: isObject(clone) ? clone.clone : null, boot: isObject(boot) ? boot.boot : null },
          ["api/v3/summary/clone", "api/v3/summary/boot"], function () { return isObject(clone) && isObject(boot); });
      }
    }));  // failing, the clone and boot times keep their last data; the live badge tells
  }

  // Each poll on its own timer: ``every`` after it succeeded; after a failure twice its last wait
  // (at most MAX_BACKOFF), jittered down to half of it, or the API's Retry-After when longer.
  // While the tab is hidden a poll that comes due waits, and runs when the tab is shown again.
  var pollers = [];
  function poller(task, every) {
    // failing: its last poll failed; notBefore: when the API's Retry-After lets it ask again.
    var p = { wait: every, timer: null, waiting: false, failing: false, notBefore: 0 };
    p.run = function () {
      p.timer = null;
      if (document.hidden) { p.waiting = true; return; }
      p.waiting = false;
      var delay = every;
      task().then(function () { p.wait = every; p.failing = false; }, function (error) {
        var asked = (error && error.retryAfter || 0) * 1000;
        p.wait = Math.min(MAX_BACKOFF, Math.max(p.wait * 2, asked));
        delay = Math.max(Math.min(asked, MAX_BACKOFF), p.wait / 2 + Math.random() * p.wait / 2);
        p.failing = true;
        p.notBefore = Date.now() + Math.min(asked, MAX_BACKOFF);
      }).then(function () {
        if (!p.timer) { p.timer = setTimeout(p.run, delay); }
      });
    };
    // The API answers again: a poll waiting out its back-off runs now (once: it fails again, it
    // backs off again), unless the API's Retry-After asked it to wait longer.
    p.backOnline = function () {
      if (p.failing && p.timer && Date.now() >= p.notBefore) { p.now(); }
    };
    p.now = function () {  // at once (a new range), then on its cadence
      if (p.timer) { clearTimeout(p.timer); p.timer = null; }
      p.run();
    };
    pollers.push(p);
    return p;
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { return; }
    pollers.forEach(function (p) { if (p.waiting) { p.run(); } });
  });

  Array.prototype.forEach.call(document.querySelectorAll(".range button"), function (button) {
    button.addEventListener("click", function () {
      state.hours = Number(button.dataset.hours);
      Array.prototype.forEach.call(document.querySelectorAll(".range button"), function (b) {
        b.classList.toggle("on", b === button);
        b.setAttribute("aria-pressed", String(b === button));  // what a screen reader says of it
      });
      Array.prototype.forEach.call(document.querySelectorAll(".range-label"), function (n) { n.textContent = rangeLabel(state.hours); });
      historyPoll.now();
    });
  });
  $("filter").addEventListener("input", filterChanged);
  $("sort").addEventListener("change", render);
  Array.prototype.forEach.call(document.querySelectorAll("footer a[data-href]"), function (a) {
    a.href = url(a.getAttribute("data-href"));
  });

  var historyPoll = poller(pollHistory, HISTORY_EVERY);
  poller(pollStatus, STATUS_EVERY).run();
  poller(pollSummary, SUMMARY_EVERY).run();
  historyPoll.run();
  setInterval(showLive, 1000);
}());

"""The analytics app's web views, on Faust's own web server: JSON views of the tables and the store,
the analysts' query endpoint, and a small live dashboard (one HTML page polling the JSON views)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import duckdb
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from pipeline.analytics.app import Analytics

MAX_MINUTES = 24 * 60
RECENT = 10


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


def register(analytics: Analytics) -> None:
    app = analytics.app

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD)

    @app.page("/ready")
    class Ready(View):
        """200 once the tables are restored and partitions assigned (503 before): for probes and tests."""

        async def get(self, request: Request) -> Response:
            ready = analytics.ready()
            return self.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/sessions")
    class Sessions(View):
        async def get(self, request: Request) -> Response:
            everything = request.query.get("all") in ("1", "true")
            return self.json({"sessions": analytics.sessions(everything=everything)})

    @app.page("/sessions/{session_id}")
    class OneSession(View):
        async def get(self, request: Request, session_id: str) -> Response:
            found = analytics.session(session_id)
            if found is None:
                return self.json({"error": f"no session {session_id!r}"}, status=404)
            return self.json(found)

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            minutes = _int_param(request, "minutes", 10, 1, MAX_MINUTES)
            if minutes is None:
                return self.json({"error": f"minutes must be a whole number from 1 to {MAX_MINUTES}"}, status=400)
            return self.json(analytics.stats(minutes))

    @app.page("/recent")
    class Recent(View):
        async def get(self, request: Request) -> Response:
            limit = _int_param(request, "limit", RECENT, 1, 1000)
            if limit is None:
                return self.json({"error": "limit must be a whole number from 1 to 1000"}, status=400)
            return self.json({"sessions": analytics.store.recent(limit)})

    @app.page("/query")
    class Query(View):
        """``POST {"sql": ...}``: a read-only query on the store (the app holds DuckDB's one writer)."""

        async def post(self, request: Request) -> Response:
            body: Any = await request.json()
            sql = body.get("sql") if isinstance(body, dict) else None
            if not isinstance(sql, str) or not sql.strip():
                return self.json({"error": 'expected a JSON body {"sql": "..."}'}, status=400)
            try:
                result = await asyncio.to_thread(analytics.store.query, sql)
            except duckdb.Error as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.json(result.to_dict())


DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stt-pipeline analytics</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .6em} .tiles{display:flex;gap:1em;flex-wrap:wrap}
.tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7em 1em;min-width:9em}
.tile b,.tile svg{display:block;font-size:1.8em} table{border-collapse:collapse;margin-top:.5em;background:#fff}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
.text{max-width:40em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.failed,.truncated{color:#b00} #updated{color:#888;font-size:.85em} h2{font-size:1.05em;margin:1.2em 0 .2em}
</style></head><body>
<h1>stt-pipeline analytics <span id="updated"></span></h1>
<div class="tiles">
 <div class="tile">sessions now<b id="open">-</b></div>
 <div class="tile">turns this minute<b id="tpm">-</b></div>
 <div class="tile">words per minute (30 min)<svg id="spark" width="220" height="40"></svg></div>
 <div class="tile">end → final p50 / p95<b id="latency">-</b></div>
</div>
<h2>Live sessions</h2><table id="live"><thead><tr><th>session</th><th>state</th><th>turns</th><th>words</th>
<th>current turn</th></tr></thead><tbody></tbody></table>
<h2>Recent finals</h2><table id="finals"><thead><tr><th>session</th><th>status</th><th>turns</th><th>words</th>
<th>audio s</th><th>latency ms</th><th>transcript</th></tr></thead><tbody></tbody></table>
<h2>Errors and dead letters (30 min)</h2><table id="errors"><tbody></tbody></table>
<script>
function cell(tr, text, cls) { const td = document.createElement('td'); td.textContent = text;
  if (cls) td.className = cls; tr.appendChild(td); }
function fill(id, rows, cols) { const body = document.querySelector('#' + id + ' tbody'); body.replaceChildren();
  for (const r of rows) { const tr = document.createElement('tr'); tr.id = id + '-' + (r.session_id || r.name);
    for (const [k, cls] of cols) cell(tr, r[k] == null ? '' : r[k], typeof cls === 'function' ? cls(r) : cls);
    body.appendChild(tr); } }
function spark(values) { const svg = document.getElementById('spark'), max = Math.max(1, ...values);
  const pts = values.map((v, i) => (i * 220 / Math.max(1, values.length - 1)).toFixed(1) + ',' +
    (38 - v * 36 / max).toFixed(1)).join(' ');
  svg.innerHTML = '<polyline fill="none" stroke="#36c" stroke-width="2" points="' + pts + '"/>'; }
async function refresh() {
  try {
    const [stats, live, recent] = await Promise.all(['stats?minutes=30', 'sessions', 'recent']
      .map(p => fetch(p).then(r => r.json())));
    const minutes = stats.minutes, now = minutes[minutes.length - 1];
    document.getElementById('open').textContent = stats.open_sessions;
    document.getElementById('tpm').textContent = now.counts.turns || 0;
    const lat = stats.total.latency_ms;
    document.getElementById('latency').textContent = lat.n ? lat.p50 + ' / ' + lat.p95 + ' ms' : '-';
    spark(minutes.map(m => m.counts.words || 0));
    fill('live', live.sessions, [['session_id'], ['state'], ['turns'], ['words'], ['turn_text', 'text']]);
    fill('finals', recent.sessions, [['session_id'], ['status', r => r.status], ['turns'], ['words'],
      ['audio_s'], ['latency_ms'], ['transcript', 'text']]);
    const errs = Object.entries(stats.total.counts).filter(([k]) => k.startsWith('errors.') ||
      k.startsWith('dead_letters.')).map(([name, count]) => ({name, count}));
    fill('errors', errs, [['name'], ['count']]);
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) { document.getElementById('updated').textContent = 'disconnected'; }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""

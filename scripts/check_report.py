"""The checks of scripts/check-report (which finds chromium and runs this with .venv's python):

    check_report.py CHROMIUM REPORT_DIR

REPORT_DIR is a Report stage's output (index.html, metrics.json, report.md) or a study's
comparison (index.html, study.json, study.md): for a study, read study.json's `study` for
the pipeline name and study.md for report.md below, and the PDF needs one page, not two.

plots       a screenshot of index.html (1200 px wide) carries > 20000 saturated pixels: the
            plot series (Okabe-Ito palette) rendered; text, tables and axes are grey.
provenance  the rendered page has an element id="provenance" whose text (textContent, a
            space between blocks) has metrics.json's provenance.pipeline.name as a word.
tables      every GitHub pipe table of report.md (outside code fences) is a <table> of the
            rendered page with the same header cells and as many body rows, one page table
            per Markdown table. Header: the <th> cells (text whitespace-normalised) of the
            <thead> row, else of the first row if all its cells are <th>; body rows: the
            other rows with cells (nested tables apart). Markdown cells are rendered to text:
            backslash escapes, code spans, entities, link text; emphasis markers dropped.
overflow    at a 1280 px and a 390 px wide viewport no svg, img, figure or table extends past
            document.documentElement.clientWidth, unless inside a scroll container (an
            ancestor below <body> with computed overflow-x auto or scroll).
pdf         chromium --print-to-pdf of index.html has >= 2 pages, none without text, and
            page 1 has the word "Summary" and the pipeline name.

The rendered DOM and the measurements come from `chromium --headless --dump-dom` of a copy of
index.html with a measuring <script> injected before </body>; the script writes its JSON into
a <pre id="flow-check">. The copy lies in a temporary mirror of the report directory's parent
(symlinks), so relative URLs (plots/…, ../run.js) resolve as for the real page, which is never
written to. Chromium's windows are at least 500 px wide, so the 390 px viewport is an iframe
of that width in a harness page, the script posting its result to the harness (the
1280 px one is the window itself, and its dumped DOM is the one the provenance and tables
checks read).

One line per check on stdout, "ok NAME: …" or "FAIL NAME: …". Exit 0: all passed; 1: one
failed; 2: the environment is not set up (a missing Python package).
"""

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

try:
    from PIL import Image
    import pypdf
except ImportError as e:
    print(f"check-report: {e.name} is not in .venv: run scripts/setup", file=sys.stderr)
    sys.exit(2)

CALL_TIMEOUT = 45  # seconds, per chromium run
WIDE, NARROW = (1280, 900), (390, 844)


def norm(s):
    return " ".join(s.split())


def names(text, name):
    """text has name as a whole word (whitespace-normalised): "full" is not in "fully"."""
    return re.search(r"(?<!\w)" + re.escape(norm(name)) + r"(?!\w)", norm(text)) is not None


def short(s, n=80):
    s = norm(s)
    return s if len(s) <= n else s[: n - 1] + "…"


# -- chromium ---------------------------------------------------------------------------------


class Chromium:
    def __init__(self, exe, profile):
        self.exe, self.profile = exe, profile

    def run(self, *args):
        """stdout of one headless run (None if it timed out). No network: the report must be
        self-contained; --no-sandbox: CI containers run as root; a fresh profile (one per
        invocation of check-report) and no background networking: on a closed network
        Chromium otherwise retries its own connections at every start."""
        cmd = [
            self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={self.profile}", "--proxy-server=127.0.0.1:9",
            *args,
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            out = None
        # Its own helpers (crashpad, zygotes) share the new process group: end them too.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        return None if out is None else out.decode("utf-8", "replace")


# -- a small DOM from html.parser ------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


BLOCK = {"address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog",
         "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
         "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
         "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        """textContent, with a space where a block or a cell starts or ends: the words a
        reader sees apart stay apart (<h2>Provenance</h2><p>full</p>: "Provenance full")."""
        parts = []
        for c in self.children:
            if isinstance(c, str):
                parts.append(c)
            elif c.tag in BLOCK:
                parts += [" ", c.text(), " "]
            else:
                parts.append(c.text())
        return "".join(parts)

    def iter(self, tag=None, into=None):
        """Descendants in document order; `into(node)` False: do not descend into node."""
        for c in self.children:
            if isinstance(c, Node):
                if tag is None or c.tag == tag:
                    yield c
                if into is None or into(c):
                    yield from c.iter(tag, into)


class Dom(HTMLParser):
    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [], None)
        self.cur = self.root
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)

    def by_id(self, id_):
        return next((n for n in self.root.iter() if n.attrs.get("id") == id_), None)


def dom_tables(dom):
    """(header cells, body row count) of each <table> of the DOM, nested tables apart."""
    out = []
    for t in dom.root.iter("table"):
        rows = list(t.iter("tr", into=lambda n: n.tag != "table"))
        cells = lambda tr: [c for c in tr.children if isinstance(c, Node) and c.tag in ("th", "td")]
        in_thead = lambda tr: tr.parent is not None and tr.parent.tag == "thead"
        head_rows = [r for r in rows if in_thead(r)]
        if not head_rows:
            first = next((r for r in rows if cells(r)), None)
            if first is not None and all(c.tag == "th" for c in cells(first)):
                head_rows = [first]
        head = [norm(c.text()) for c in cells(head_rows[0]) if c.tag == "th"] if head_rows else []
        body = [r for r in rows if r not in head_rows and cells(r)]
        out.append((head, len(body)))
    return out


# -- report.md's tables -----------------------------------------------------------------------

PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
DELIM = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
ENTITY = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(\s[^<>]*)?/?>")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*)>")


def split_row(line):
    """A pipe-table row's raw cells: split at unescaped |, then \\| -> | (GFM does that before
    inline parsing, inside code spans too)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    cells, cur, i = [], "", 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            cur += s[i : i + 2]
            i += 2
        elif s[i] == "|":
            cells.append(cur)
            cur, i = "", i + 1
        else:
            cur += s[i]
            i += 1
    if cur.strip():
        cells.append(cur)
    return [c.replace("\\|", "|") for c in cells]


def inline_text(s):
    """The text a cell's Markdown renders to, near enough for headers: backslash escapes,
    code spans (literal), entities; emphasis/strikethrough markers, link and image brackets
    and raw tags dropped."""
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in PUNCT:
            out.append(s[i + 1])
            i += 2
        elif c == "`":
            j = i
            while j < n and s[j] == "`":
                j += 1
            run, k, close = j - i, j, None
            while k < n:
                if s[k] == "`":
                    e = k
                    while e < n and s[e] == "`":
                        e += 1
                    if e - k == run:
                        close = (k, e)
                        break
                    k = e
                else:
                    k += 1
            if close is None:
                out.append(s[i:j])
                i = j
            else:
                code = s[j : close[0]]
                if len(code) >= 2 and code[0] == " " and code[-1] == " " and code.strip():
                    code = code[1:-1]
                out.append(code)
                i = close[1]
        elif c == "&" and (m := ENTITY.match(s, i)):
            out.append(html.unescape(m.group(0)))
            i = m.end()
        elif c == "<" and (m := AUTOLINK.match(s, i)):
            out.append(m.group(1))
            i = m.end()
        elif c == "<" and (m := TAG.match(s, i)):
            i = m.end()
        elif c in "*~":
            i += 1
        elif c == "_" and not (0 < i < n - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()):
            i += 1
        elif (c == "[" or (c == "!" and s[i + 1 : i + 2] == "[")) and (link := inline_link(s, i)):
            text, i = link
            out.append("" if c == "!" else text)  # an image's alt text is no textContent
        else:
            out.append(c)
            i += 1
    return norm("".join(out))


def closing(s, i, open_, close):
    """Index of the bracket closing s[i] (== open_), backslash escapes skipped; None if none."""
    depth = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += 1 if s[i] == open_ else -1 if s[i] == close else 0
        if depth == 0:
            return i
        i += 1
    return None


def inline_link(s, i):
    """[text](url) or ![alt](url) at s[i]: (rendered text, index after it); None otherwise
    (a bracket with no (url) after it is literal text)."""
    b = i + 1 if s[i] == "!" else i
    e = closing(s, b, "[", "]")
    if e is None or s[e + 1 : e + 2] != "(":
        return None
    p = closing(s, e + 1, "(", ")")
    return None if p is None else (inline_text(s[b + 1 : e]), p + 1)


def md_tables(text):
    """(header cells, body row count) of each pipe table of a Markdown text, outside fences."""
    lines, out, i, fence = text.split('\n'), [], 0, None
    while i < len(lines):
        line = lines[i]
        f = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if fence:
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence):
                fence = None
            i += 1
            continue
        if f:
            fence = f.group(1)
            i += 1
            continue
        if "|" in line and i + 1 < len(lines) and DELIM.match(lines[i + 1]) and "|" in lines[i + 1]:
            head = split_row(line)
            if len(split_row(lines[i + 1])) == len(head):
                j = i + 2
                while j < len(lines) and lines[j].strip() and "|" in lines[j]:
                    j += 1
                out.append(([inline_text(c) for c in head], j - i - 2))
                i = j
                continue
        i += 1
    return out


# -- the measuring script ---------------------------------------------------------------------

MEASURE_JS = r"""<script>(function () {
  var me = document.currentScript;
  function scrolls(el) {
    for (var a = el.parentElement; a && a !== document.body && a !== document.documentElement; a = a.parentElement) {
      var o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll') return true;
    }
    return false;
  }
  function name(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    var c = el.getAttribute('class');
    if (c && c.trim()) s += '.' + c.trim().split(/\s+/).join('.');
    var f = el.closest('figure'), cap = f && f.querySelector('figcaption');
    if (!cap && el.tagName.toLowerCase() === 'table') {
      cap = el.querySelector('caption');
      if (!cap) {
        var th = Array.prototype.map.call(el.querySelectorAll('tr:first-child > th'), function (c) {
          return c.textContent.trim().replace(/\s+/g, ' ');
        });
        if (th.length) s += ' [' + th.join(', ') + ']';
      }
    }
    if (cap) s += ' ("' + cap.textContent.trim().replace(/\s+/g, ' ') + '")';
    return s;
  }
  function send(r) {
    var j = JSON.stringify(r);
    if (window.parent !== window) { window.parent.postMessage(j, '*'); return; }
    var p = document.createElement('pre');
    p.id = 'flow-check'; p.hidden = true; p.textContent = j;
    document.body.appendChild(p);
  }
  function measure() {
    try {
      if (me) me.remove();
      var w = document.documentElement.clientWidth, n = 0, bad = [];
      document.querySelectorAll('svg, img, figure, table').forEach(function (el) {
        if (el.tagName.toLowerCase() === 'svg' && el.parentElement && el.parentElement.closest('svg')) return;
        n++;
        var r = el.getBoundingClientRect();
        if (r.width === 0 && r.height === 0) return;
        var left = r.left + window.scrollX, right = r.right + window.scrollX;
        if ((right > w + 1 || left < -1) && !scrolls(el))
          bad.push({el: name(el), left: Math.round(left), right: Math.round(right)});
      });
      send({width: w, checked: n, overflow: bad});
    } catch (e) { send({error: String(e)}); }
  }
  window.addEventListener('load', function () { setTimeout(measure, 200); });
})();</script>"""

HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>html,body{{margin:0}}
iframe{{border:0;display:block}}</style><script>
window.addEventListener('message', function (e) {{
  var p = document.createElement('pre');
  p.id = 'flow-check'; p.textContent = typeof e.data === 'string' ? e.data : '';
  document.body.appendChild(p);
}});</script></head><body>
<iframe src="{src}" style="width:{w}px;height:{h}px"></iframe></body></html>
"""


def mirror(report, tmp):
    """tmp/m/<parent's entries as symlinks>/<report dir>/<its entries as symlinks>, index.html
    replaced by a copy with the measuring script; returns the copy's path."""
    parent, name = os.path.split(report)
    m = os.path.join(tmp, "m")
    os.mkdir(m)
    for e in os.listdir(parent):
        if e != name:
            os.symlink(os.path.join(parent, e), os.path.join(m, e))
    d = os.path.join(m, name)
    os.mkdir(d)
    for e in os.listdir(report):
        if e != "index.html":
            os.symlink(os.path.join(report, e), os.path.join(d, e))
    with open(os.path.join(report, "index.html"), encoding="utf-8", errors="replace") as f:
        page = f.read()
    k = page.lower().rfind("</body>")
    page = page + MEASURE_JS if k < 0 else page[:k] + MEASURE_JS + page[k:]
    copy = os.path.join(d, "index.html")
    with open(copy, "w", encoding="utf-8") as f:
        f.write(page)
    return copy


def flow_check(dom):
    pre = dom.by_id("flow-check") if dom else None
    if pre is None:
        return None
    try:
        return json.loads(pre.text())
    except ValueError:
        return None


# -- the checks -------------------------------------------------------------------------------


def check_plots(chrome, html_path, tmp):
    shot = os.path.join(tmp, "report.png")
    chrome.run("--window-size=1200,4000", f"--screenshot={shot}", "file://" + html_path)
    if not (os.path.exists(shot) and os.path.getsize(shot)):
        return False, "chromium wrote no screenshot"
    im = Image.open(shot).convert("RGB")
    px = im.get_flattened_data() if hasattr(im, "get_flattened_data") else im.getdata()
    n = sum(1 for r, g, b in px if max(r, g, b) - min(r, g, b) > 60)
    msg = f"screenshot {im.size[0]}x{im.size[1]}: {n} coloured (plot) pixels"
    if n > 20000:
        return True, msg
    fd, keep = tempfile.mkstemp(prefix="check-report-", suffix=".png")
    os.close(fd)
    shutil.copyfile(shot, keep)
    return False, f"{msg}, want > 20000 ({keep})"


def check_provenance(dom, name):
    el = dom.by_id("provenance") if dom else None
    if dom is None:
        return False, "chromium dumped no DOM"
    if name is None:
        what = "no element id=\"provenance\" in the page; " if el is None else ""
        return False, what + "metrics.json has no provenance.pipeline.name (a string)"
    if el is None:
        return False, 'no element id="provenance" in the page'
    if not names(el.text(), name):
        return False, f'#provenance does not name "{name}" (its text: "{short(el.text())}")'
    return True, f'names "{name}"'


def check_tables(dom, md_path):
    if dom is None:
        return False, "chromium dumped no DOM"
    try:
        with open(md_path, encoding="utf-8") as f:
            want = md_tables(f.read())
    except OSError as e:
        return False, f"cannot read {os.path.basename(md_path)}: {e.strerror}"
    have = dom_tables(dom)
    used = set()
    for head, rows in want:
        hit = next((i for i, t in enumerate(have) if i not in used and t == (head, rows)), None)
        if hit is None:
            same = [r for h, r in have if h == head]
            why = f" (a table with that header has {same[0]} body rows, report.md {rows})" if same else ""
            return False, f"{os.path.basename(md_path)} table [{', '.join(head)}] not in page{why}"
        used.add(hit)
    if not want:
        return True, "report.md has no tables"
    return True, f"all {len(want)} tables of report.md in page ({len(have)} in page)"


def check_overflow(results):
    fails, seen = [], []
    for w, r in results:
        if r is None:
            fails.append(f"at {w} px the measuring script reported nothing "
                         "(a script error? a Content-Security-Policy?)")
        elif "error" in r:
            fails.append(f"at {w} px the measuring script failed: {r['error']}")
        else:
            seen.append(f"{r['width']} px ({r['checked']} checked)")
            bad = r["overflow"]
            if bad:
                b = bad[0]
                more = f"; {len(bad) - 1} more: {', '.join(x['el'] for x in bad[1:4])}" if len(bad) > 1 else ""
                more += ", …" if len(bad) > 4 else ""
                fails.append(f"at {r['width']} px {b['el']} spans {b['left']}..{b['right']} px, "
                             f"past the viewport{more}")
    if fails:
        return False, "; ".join(fails)
    return True, "no svg, img, figure or table past the viewport at " + " and ".join(seen)


def check_pdf(chrome, html_path, tmp, name, min_pages):
    pdf = os.path.join(tmp, "report.pdf")
    chrome.run("--virtual-time-budget=5000", "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
               "file://" + html_path)
    if not os.path.exists(pdf) or not os.path.getsize(pdf):
        return False, "chromium wrote no PDF"
    try:
        texts = [p.extract_text() or "" for p in pypdf.PdfReader(pdf).pages]
    except Exception as e:  # a PDF pypdf cannot read is a failed check, not a crash
        return False, f"pypdf cannot read the PDF: {e}"
    fails = []
    if len(texts) < min_pages:
        fails.append(f"{len(texts)} page(s), want >= {min_pages}")
    blank = [str(i + 1) for i, t in enumerate(texts) if not t.strip()]
    if blank:
        fails.append(f"no text on page {', '.join(blank)}")
    first = norm(texts[0]) if texts else ""
    if not re.search(r"\bSummary\b", first):
        fails.append('page 1 lacks "Summary"')
    if name is None:
        fails.append("no pipeline name to look for (metrics.json has no provenance.pipeline.name)")
    elif not names(first, name):
        fails.append(f'page 1 lacks "{name}"')
    if fails:
        return False, "; ".join(fails) + f' (page 1: "{short(first)}")'
    return True, f'{len(texts)} pages, page 1 has "Summary" and "{name}"'


def main():
    if len(sys.argv) != 3:
        print("usage: check_report.py CHROMIUM REPORT_DIR", file=sys.stderr)
        return 2
    exe, report = sys.argv[1], os.path.abspath(sys.argv[2])
    html_path = os.path.join(report, "index.html")
    if not os.path.isfile(html_path):
        print(f"check-report: no {html_path}", file=sys.stderr)
        return 2
    name = None
    # A study's comparison page (study.json, study.md) or a report (metrics.json, report.md).
    study = os.path.isfile(os.path.join(report, "study.json"))
    data, md = ("study.json", "study.md") if study else ("metrics.json", "report.md")
    try:
        with open(os.path.join(report, data), encoding="utf-8") as f:
            doc = json.load(f)
        n = doc.get("study") if study else doc.get("provenance", {}).get("pipeline", {}).get("name")
        name = n if isinstance(n, str) and n.strip() else None
    except (OSError, ValueError, AttributeError):
        pass

    tmp = tempfile.mkdtemp(prefix="check-report.")
    try:
        profile = os.path.join(tmp, "profile")
        os.mkdir(profile)
        chrome = Chromium(exe, profile)
        results = [("plots", check_plots(chrome, html_path, tmp))]

        copy = mirror(report, tmp)
        w, h = WIDE
        out = chrome.run("--virtual-time-budget=5000", f"--window-size={w},{h}", "--dump-dom",
                         "file://" + copy)
        dom = Dom(out) if out and out.strip() else None
        wide = flow_check(dom)
        w, h = NARROW
        harness = os.path.join(tmp, "harness.html")
        with open(harness, "w", encoding="utf-8") as f:
            f.write(HARNESS.format(src=html.escape("file://" + copy), w=w, h=h))
        out = chrome.run("--virtual-time-budget=5000", f"--window-size={max(w, 500) + 20},{h + 100}",
                         "--dump-dom", "file://" + harness)
        narrow = flow_check(Dom(out)) if out and out.strip() else None

        results += [
            ("provenance", check_provenance(dom, name)),
            ("tables", check_tables(dom, os.path.join(report, md))),
            ("overflow", check_overflow([(WIDE[0], wide), (NARROW[0], narrow)])),
            ("pdf", check_pdf(chrome, html_path, tmp, name, 1 if study else 2)),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for check, (ok, msg) in results:
        print(f"{'ok' if ok else 'FAIL'} {check}: {msg}")
    return 0 if all(ok for _, (ok, _) in results) else 1


if __name__ == "__main__":
    sys.exit(main())

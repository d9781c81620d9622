// Browser test of the built static book, with no kernel behind it:
//  (a) the sparsity visualizer (chapter 4) switches rules and sparsity, and the cells it shows are
//      sparselib's masks (recomputed by tests/browser/expected_masks.py) and its embedded data;
//      magnitude and Wanda show different masks;
//  (b) every chapter's quiz renders all its questions, and answering gives the right feedback;
//  (c) screenshots go to the artifacts folder;
//  (d) on every page, formulas are typeset by the MathJax the book serves itself (no raw \( \) left),
//      every table a chapter printed is an HTML <table> with the rows its executed notebook holds,
//      and no markdown table text (|---|) reaches the page.
// Only the local server is reachable from the page: anything else (CDNs) is blocked, so what works
// here works offline.
//
//   BOOK_HTML=.ci-book/_build/html ARTIFACTS=_build/browser-artifacts node tests/browser/book.test.mjs
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const BOOK = path.resolve(ROOT, process.env.BOOK_HTML ?? ".ci-book/_build/html");
const ARTIFACTS = path.resolve(ROOT, process.env.ARTIFACTS ?? "_build/browser-artifacts");
const PYTHON = process.env.PYTHON ?? path.join(ROOT, ".venv/bin/python");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const VIZ_PAGE = "chapters/04-visualizer.html";
const QUIZ_DIR = path.join(ROOT, "sparselib/quizzes");
// The executed notebooks the book was built from: make notebooks' copy (.ci-book/chapters) or
// make book's execution folder (_build/jupyter_execute/chapters).
const EXECUTED = [process.env.EXECUTED_NOTEBOOKS, path.resolve(BOOK, "../../chapters"),
                  path.resolve(BOOK, "../jupyter_execute/chapters")].filter(Boolean);

let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (err) {
    failures++;
    console.log(`not ok - ${name}\n  ${String(err.stack ?? err).split("\n").join("\n  ")}`);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function serve(dir) {
  const port = await freePort();
  const server = spawn(PYTHON, ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", dir],
                       { stdio: "ignore" });
  const base = `http://127.0.0.1:${port}/`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(base)).ok) return { base, server };
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  server.kill();
  throw new Error(`the book server on port ${port} did not start`);
}

/** Masks sparselib computes for the matrices embedded in the page (see expected_masks.py). */
function libraryMasks(widgets) {
  const run = spawnSync(PYTHON, [path.join(HERE, "expected_masks.py")], {
    input: JSON.stringify(widgets.map((d) => ({ W: d.W, x_norm: d.x_norm, sparsities: d.sparsities }))),
    encoding: "utf8", maxBuffer: 64 << 20,
  });
  if (run.status !== 0) throw new Error(`expected_masks.py failed:\n${run.stderr}`);
  return JSON.parse(run.stdout);
}

const shownMask = (root) => root.$$eval("td.sv-cell", (cells) => {
  const rows = [];
  for (const c of cells) {
    const i = +c.dataset.row, j = +c.dataset.col;
    (rows[i] ??= [])[j] = +c.dataset.kept;
  }
  return rows;
});

async function setStep(root, page, step) {
  const slider = await root.$("input.sv-slider");
  await slider.focus();
  await page.keyboard.press("Home");                       // a user's keys, not a scripted value
  for (let k = 0; k < step; k++) await page.keyboard.press("ArrowRight");
  assert.equal(await slider.evaluate((s) => +s.value), step);
}

async function testVisualizer(page, base) {
  await page.goto(base + VIZ_PAGE, { waitUntil: "load" });
  const roots = await page.$$(".sv-root");
  assert.ok(roots.length >= 2, `expected the toy and the SmolLM2 visualizers on ${VIZ_PAGE}, found ${roots.length}`);
  const data = await Promise.all(roots.map((r) => r.$eval("script.sv-data", (s) => JSON.parse(s.textContent))));
  const lib = libraryMasks(data);
  assert.ok(data.some((d) => JSON.stringify(d.W) === JSON.stringify(lib.toy.W)
                             && JSON.stringify(d.x_norm) === JSON.stringify(lib.toy.x_norm)),
            "no visualizer on the page shows the course's toy layer (sparselib.toy_layer())");

  for (const [n, root] of roots.entries()) {
    const d = data[n], want = lib.widgets[n];
    await root.scrollIntoViewIfNeeded();
    const half = d.sparsities.indexOf(0.5);
    const atHalf = {};
    for (const mode of d.modes) {
      await root.$eval(`button.sv-mode[data-mode="${mode.key}"]`, (b) => b.scrollIntoView({ block: "center" }));
      await (await root.$(`button.sv-mode[data-mode="${mode.key}"]`)).click();
      assert.equal(await root.getAttribute("data-mode"), mode.key);
      assert.equal(await root.$eval(`button.sv-mode[data-mode="${mode.key}"]`, (b) => b.getAttribute("aria-pressed")), "true");
      const steps = mode.uses_sparsity ? d.sparsities.map((_, k) => k) : [0];
      assert.equal(await root.$eval("input.sv-slider", (s) => s.disabled), !mode.uses_sparsity);
      for (const step of steps) {
        if (mode.uses_sparsity) await setStep(root, page, step);
        const shown = await shownMask(root);
        assert.deepEqual(shown, d.states[mode.key][step].keep, `widget ${n}, ${mode.key}, step ${step}: not the embedded mask`);
        assert.deepEqual(shown, want[mode.key][step], `widget ${n}, ${mode.key}, step ${step}: not sparselib's mask`);
        const summary = await root.$eval(".sv-summary", (p) => p.textContent);
        assert.equal(summary, d.states[mode.key][step].summary);
      }
      if (mode.uses_sparsity) await setStep(root, page, half);
      atHalf[mode.key] = await shownMask(root);
      // the kept/pruned difference is visible, not only an attribute
      const colors = await root.$$eval("td.sv-cell", (cells) => [...new Set(
        cells.map((c) => `${c.dataset.kept}:${getComputedStyle(c).backgroundColor}`))]);
      const keptColors = new Set(colors.filter((c) => c.startsWith("1:")).map((c) => c.slice(2)));
      const prunedColors = colors.filter((c) => c.startsWith("0:")).map((c) => c.slice(2));
      assert.ok(prunedColors.every((c) => !keptColors.has(c)), `widget ${n}, ${mode.key}: pruned cells look like kept ones`);
      const file = path.join(ARTIFACTS, `visualizer-${n}-${mode.key.replace(":", "of")}.png`);
      await root.screenshot({ path: file });
    }
    assert.notDeepEqual(atHalf.magnitude, atHalf.wanda, `widget ${n}: magnitude and Wanda show the same mask at 50%`);
    // on the outlier channels, Wanda keeps at least as much as magnitude
    const onOutliers = (m) => m.flatMap((row) => row.filter((_, j) => d.outliers[j])).reduce((a, b) => a + b, 0);
    assert.ok(onOutliers(atHalf.wanda) > onOutliers(atHalf.magnitude),
              `widget ${n}: Wanda should keep more outlier-channel weights than magnitude at 50%`);
  }
  await page.screenshot({ path: path.join(ARTIFACTS, "visualizer-page.png"), fullPage: false });
}

async function testQuiz(page, base, rel) {
  const stem = path.basename(rel, ".html");
  const questions = JSON.parse(fs.readFileSync(path.join(QUIZ_DIR, `${stem}.json`), "utf8"));
  await page.goto(base + rel, { waitUntil: "load" });
  await page.waitForSelector(".Quiz", { timeout: 10_000 });
  const quizzes = await page.$$(".Quiz");
  assert.equal(quizzes.length, questions.length, `${rel}: ${quizzes.length} questions rendered, ${questions.length} in the quiz file`);
  const quiz = quizzes[0], q = questions[0];
  const labels = await quiz.$$("label.MCButton");
  assert.equal(labels.length, q.answers.length);
  const wrong = q.answers.findIndex((a) => !a.correct), right = q.answers.findIndex((a) => a.correct);
  const feedback = () => quiz.$eval(".Feedback", (f) => ({ text: f.textContent.trim(), cls: f.className }));
  await labels[wrong].scrollIntoViewIfNeeded();
  await labels[wrong].click();
  let fb = await feedback();
  assert.match(fb.cls, /\bincorrect\b/, `${rel}: a wrong answer is not marked incorrect`);
  assert.equal(fb.text, q.answers[wrong].feedback.trim());
  await labels[right].click();
  fb = await feedback();
  assert.match(fb.cls, /(^|\s)correct\b/, `${rel}: the right answer is not marked correct`);
  assert.equal(fb.text, q.answers[right].feedback.trim());
  assert.match(await labels[right].getAttribute("class"), /correctButton/);
  await quiz.screenshot({ path: path.join(ARTIFACTS, `quiz-${stem}.png`) });
}

/** Row counts of the HTML tables a chapter's executed notebook printed, in order (null: no notebook). */
function printedTables(stem) {
  for (const dir of EXECUTED) {
    const file = path.join(dir, `${stem}.ipynb`);
    if (!fs.existsSync(file)) continue;
    const nb = JSON.parse(fs.readFileSync(file, "utf8"));
    const rows = [];
    for (const cell of nb.cells) {
      const tags = cell.metadata?.tags ?? [];
      if (cell.cell_type !== "code" || tags.includes("remove-cell") || tags.includes("remove-output")) continue;
      for (const out of cell.outputs ?? []) {
        const html = [].concat(out.data?.["text/html"] ?? []).join("");
        for (const table of html.match(/<table[\s\S]*?<\/table>/g) ?? []) rows.push((table.match(/<tr[\s>]/g) ?? []).length);
      }
    }
    return rows;
  }
  return null;
}

/** Text outside code listings, formulas and scripts: what a reader reads as prose. */
const proseText = (page) => page.evaluate(() => {
  const skip = (el) => el.closest("pre, code, script, style, textarea, .highlight, mjx-container, mjx-assistive-mml");
  const walker = document.createTreeWalker(document.querySelector("main") ?? document.body, NodeFilter.SHOW_TEXT);
  const parts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (!skip(n.parentElement)) parts.push(n.nodeValue);
  return parts.join(" ");
});

async function testRendering(page, base, rel) {
  await page.goto(base + rel, { waitUntil: "load" });
  const mathjax = await page.evaluate(async () => {
    if (!window.MathJax?.startup?.promise) return { loaded: false };
    await window.MathJax.startup.promise;
    return { loaded: true, src: [...document.scripts].map((s) => s.src).find((s) => /mathjax/i.test(s)) ?? "" };
  });
  const mathSpans = await page.$$eval(".math", (els) => els.length);
  if (mathSpans > 0) {
    assert.ok(mathjax.loaded, `${rel}: ${mathSpans} formulas but MathJax did not load (network blocked: it must come from the book)`);
    assert.ok(mathjax.src.startsWith(base), `${rel}: MathJax comes from ${mathjax.src}, not from the book`);
    const untypeset = await page.$$eval(".math", (els) => els.filter((e) => !e.querySelector("mjx-container")).length);
    assert.equal(untypeset, 0, `${rel}: ${untypeset} of ${mathSpans} formulas were not typeset`);
  }
  const prose = await proseText(page);
  const raw = prose.match(/\\[([]/g) ?? [];
  assert.equal(raw.length, 0, `${rel}: raw TeX delimiters left in the text: ${prose.slice(Math.max(0, prose.search(/\\[([]/) - 60)).slice(0, 140)}`);
  assert.ok(!/\|\s*:?-{3,}:?\s*\|/.test(prose), `${rel}: markdown table text (|---|) reached the page`);

  const want = printedTables(path.basename(rel, ".html"));
  if (want !== null) {
    const shown = await page.$$eval(".cell_output table", (ts) => ts.map((t) => t.querySelectorAll("tr").length));
    assert.deepEqual(shown, want, `${rel}: the tables on the page (rows: ${shown}) are not the ones the notebook printed (rows: ${want})`);
  }
  return { math: mathSpans, tables: want?.length ?? 0 };
}

/** Errors the book's third-party scripts raise, with no kernel and no CDN: sphinx-thebe declares its
 * config constants twice, and jupyterquiz probes MathJax.version before MathJax (from a CDN) exists. */
function thirdParty(err) {
  if (err.message === "Identifier 'THEBE_JS_URL' has already been declared") return true;
  const frame = /at (?:.*\()?(https?:\/\/[^)\s]+?):(\d+):\d+\)?/.exec(err.stack);
  if (!frame) return false;
  const file = path.join(BOOK, new URL(frame[1]).pathname);
  if (!fs.existsSync(file)) return false;
  const line = fs.readFileSync(file, "utf8").split("\n")[+frame[2] - 1] ?? "";
  return /version\[0\]/.test(line) && fs.readFileSync(file, "utf8").includes("show_questions(");
}

async function main() {
  assert.ok(fs.existsSync(path.join(BOOK, "index.html")), `no built book at ${BOOK}: run make notebooks first`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) if (f.endsWith(".png")) fs.rmSync(path.join(ARTIFACTS, f));
  const { base, server } = await serve(BOOK);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.route("**/*", (route) =>
      route.request().url().startsWith(base) ? route.continue() : route.abort());
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (err) => errors.push({ url: page.url(), message: err.message, stack: err.stack ?? "" }));

    await check(`(a) the visualizer on ${VIZ_PAGE} shows sparselib's masks for every rule and step`, async () => {
      await testVisualizer(page, base);
    });
    const chapters = fs.readdirSync(path.join(BOOK, "chapters")).filter((f) => f.endsWith(".html")).sort();
    const withQuiz = chapters.filter((f) => fs.existsSync(path.join(QUIZ_DIR, `${path.basename(f, ".html")}.json`)));
    await check("(b) the book has chapters with quizzes", async () => assert.ok(withQuiz.length > 0));
    for (const rel of withQuiz) {
      await check(`(b) quiz on chapters/${rel} renders and grades answers`, async () => {
        await testQuiz(page, base, `chapters/${rel}`);
      });
    }
    // index.html only redirects to the root page; every other page is a chapter or the references
    const pages = [...fs.readdirSync(BOOK).filter((f) => f.endsWith(".html") && !["index.html", "genindex.html", "search.html"].includes(f)),
                   ...chapters.map((f) => `chapters/${f}`)];
    let checkedNotebooks = 0;
    for (const rel of pages) {
      await check(`(d) ${rel}: formulas typeset offline, tables are HTML tables, no |---| text`, async () => {
        if (printedTables(path.basename(rel, ".html")) !== null) checkedNotebooks++;
        const { math, tables } = await testRendering(page, base, rel);
        console.log(`  ${math} formulas, ${tables} printed tables`);
      });
    }
    await check("(d) the printed tables were compared with executed notebooks", async () =>
      assert.ok(checkedNotebooks > 0, `no executed notebooks found in ${EXECUTED.join(", ")}`));
    await check("no JavaScript errors on the pages, other than known third-party ones", async () => {
      const unknown = errors.filter((e) => !thirdParty(e));
      for (const e of errors.filter(thirdParty)) console.log(`  (ignored, third-party) ${e.url}: ${e.message}`);
      assert.deepEqual(unknown.map((e) => `${e.url}: ${e.message}\n${e.stack}`), []);
    });
    const shots = fs.readdirSync(ARTIFACTS).filter((f) => f.endsWith(".png"));
    await check(`(c) screenshots saved in ${path.relative(ROOT, ARTIFACTS) || ARTIFACTS}`, async () =>
      assert.ok(shots.length > 0));
    console.log(`screenshots: ${shots.map((f) => path.join(path.relative(ROOT, ARTIFACTS), f)).join(", ")}`);
  } finally {
    await browser.close();
    server.kill();
  }
  if (failures) {
    console.log(`${failures} check(s) failed`);
    process.exitCode = 1;
  }
}

await main();

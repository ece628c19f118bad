#!/usr/bin/env node
/**
 * Node vs Python runtime on the default model, and the web page in headless Chromium.
 *
 *   node benchmarks/js_runtime.mjs [--repeat 5] [--page-runs 3] [--page-only] [--optimization disabled,all]
 *
 * Same settings everywhere: 96x64, class star, seed 0, the package's sampler (heun, 16 steps) and guidance (4).
 * Rows: whole process (`fit-run` vs `node js/bin/fit-run.mjs`), warm call (one more image from a loaded
 * pipeline), and the page served by fit-web (open to ready, open to first image, warm image) with 1 and 2 WASM
 * threads. Prints markdown tables: median (min–max) of --repeat runs; the page's load and first image: median (min–max) of
 * --page-runs page opens, each in a fresh browser profile (nothing cached) opened once the browser has finished
 * starting (as a user opens a page in a running browser), alternating the rows; the form is filled and Generate
 * clicked in one call to the page. --page-only skips the Node and
 * Python rows; --optimization adds page rows per ONNX Runtime graph optimization level (?optimization=; default:
 * the page's own default). Needs .venv-core, `npm ci --prefix js` and Debian's chromium.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

import { FIT_RUN_JS, PYTHON, pythonEnv } from '../js/test/helpers.mjs';
import { CHROMIUM, generateInPage, launchChromium, loadPuppeteer, settleBrowser, startFitWeb } from '../js/test/browser-helpers.mjs';
import { loadPackage } from '../js/src/node.js';

const option = (name) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const repeat = Number(option('--repeat')) || 5;
const pageRuns = Number(option('--page-runs')) || 3;
const pageOnly = process.argv.includes('--page-only');
const levels = option('--optimization')?.split(',') ?? [null];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (x) => `${(x * 1000).toFixed(0)} ms`;
/** "median (min–max)" of seconds. */
const stat = (xs) => `${ms(median(xs))} (${ms(Math.min(...xs))}–${ms(Math.max(...xs))})`;
const dir = mkdtempSync(join(tmpdir(), 'fit-bench-'));
const args = ['-W', '96', '-H', '64', '--class', 'star', '--seed', '0', '-q', '-o', join(dir, 'out.png')];
const rows = [];
const loadBefore = loadavg()[0];

function wall(command, commandArgs) {
  const times = [];
  for (let i = 0; i < repeat; i++) {
    const start = process.hrtime.bigint();
    const result = spawnSync(command, commandArgs, { env: pythonEnv, encoding: 'utf8' });
    if (result.status !== 0) throw new Error(result.stderr);
    times.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  return times;
}

if (!pageOnly) {
  const pyProcess = wall(PYTHON, ['-m', 'cli.run', ...args]);
  const nodeProcess = wall(process.execPath, [FIT_RUN_JS, ...args]);
  rows.push(['whole process (fit-run, 96x64)', stat(pyProcess), stat(nodeProcess),
    (median(nodeProcess) / median(pyProcess)).toFixed(2)]);

  const pyWarm = JSON.parse(execFileSync(PYTHON, ['-c', `
import json, time, engines
pipe = engines.load()
pipe.generate(width=96, height=64, label="star", seed=0, output="array")
times = []
for i in range(${repeat}):
    start = time.perf_counter()
    pipe.generate(width=96, height=64, label="star", seed=i, output="array")
    times.append(time.perf_counter() - start)
print(json.dumps(times))
`], { env: pythonEnv, encoding: 'utf8' }));
  const pipe = await loadPackage();
  await pipe.generate({ width: 96, height: 64, label: 'star', seed: 0 });
  const nodeTimes = [];
  for (let i = 0; i < repeat; i++) {
    const start = performance.now();
    await pipe.generate({ width: 96, height: 64, label: 'star', seed: i });
    nodeTimes.push((performance.now() - start) / 1000);
  }
  await pipe.release();
  rows.push(['warm call (one 96x64 image)', stat(pyWarm), stat(nodeTimes), (median(nodeTimes) / median(pyWarm)).toFixed(2)]);
}

const browserRows = [];
if (CHROMIUM) {
  const puppeteer = await loadPuppeteer();
  const server = await startFitWeb();
  const settings = { width: 96, height: 64, class: 7, seed: 0 };
  const cases = [1, 2].flatMap((threads) => levels.map((level) => ({ threads, level, load: [], first: [], warm: [] })));
  /** Open the page in a fresh browser; times its load and first image (and warm images on the first run). */
  async function open(c, run) {
    const chromium = await launchChromium(puppeteer);
    const page = await chromium.browser.newPage();
    await settleBrowser(chromium);
    const start = performance.now();
    await page.goto(`${server.url}?threads=${c.threads}${c.level ? `&optimization=${c.level}` : ''}`);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', { timeout: 120000, polling: 'mutation' });
    c.load.push((performance.now() - start) / 1000);
    const first = await generateInPage(page, settings);
    if (first.state !== 'done') throw new Error(first.status);
    c.first.push((performance.now() - start) / 1000);
    for (let i = 0; run === 0 && i < repeat; i++) {
      const t = performance.now();
      const result = await generateInPage(page, { ...settings, seed: i + 1 });
      if (result.state !== 'done') throw new Error(result.status);
      c.warm.push((performance.now() - t) / 1000);
    }
    c.isolated = await page.evaluate(() => globalThis.crossOriginIsolated);
    await chromium.close();
  }
  for (let run = 0; run < pageRuns; run++) for (const c of cases) await open(c, run);
  for (const c of cases) {
    browserRows.push([c.level ? `${c.threads}, optimization ${c.level}` : c.threads, stat(c.load), stat(c.first),
      stat(c.warm), c.isolated ? 'yes' : 'no']);
  }
  server.stop();
}

const versions = JSON.parse(execFileSync(PYTHON, ['-c', 'import json, onnxruntime; print(json.dumps(onnxruntime.__version__))'],
  { env: pythonEnv, encoding: 'utf8' }));
console.log(`${new Date().toISOString().slice(0, 10)}, ${cpus().length} CPU cores (${cpus()[0].model}), Node ${process.version}, `
  + `onnxruntime ${versions} (Python), median (min–max) of ${repeat}; 1-minute load average ${loadBefore.toFixed(1)} before, `
  + `${loadavg()[0].toFixed(1)} after (other work on the machine inflates every number)\n`);
if (!pageOnly) {
  console.log('| default model, heun 16 steps, cfg 4 | Python runtime | Node runtime | Node / Python |');
  console.log('|---|---:|---:|---:|');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
}
if (browserRows.length) {
  console.log(`\n| page in headless Chromium (${pageRuns} opens), WASM threads | open to ready | open to first 96x64 image | warm 96x64 image | cross-origin isolated |`);
  console.log('|---|---:|---:|---:|---|');
  for (const row of browserRows) console.log(`| ${row.join(' | ')} |`);
} else console.log('\n(no chromium: page not measured)');

#!/usr/bin/env node
/**
 * Node vs Python runtime on the default model, and the web page in headless Chromium.
 *
 *   node benchmarks/js_runtime.mjs [--repeat 5] [--page-runs 3] [--page-only] [--optimization disabled,all] [--cpu]
 *     [--threads 1,2] [--ep wasm,auto]
 *
 * Same settings everywhere: 96x64, class star, seed 0, the package's sampler and guidance.
 * Rows: whole process (`fit-run` vs `node js/bin/fit-run.mjs`), warm call (one more image from a loaded
 * pipeline), and the page served by fit-web (open to ready, open to first image, warm image) with 1 and 2 WASM
 * threads. Prints markdown tables: median (min–max) of --repeat runs; the page's load and first image: median (min–max) of
 * --page-runs page opens, each in a fresh browser profile (nothing cached) opened once the browser has finished
 * starting (as a user opens a page in a running browser), alternating the rows; the form is filled and Generate
 * clicked in one call to the page. --page-only skips the Node and
 * Python rows; --optimization adds page rows per ONNX Runtime graph optimization level (?optimization=; default:
 * the page's own default). --cpu adds where the CPU time goes (Linux /proc): for each page open, how busy the
 * machine is and the CPU seconds of Chromium's threads while the freshly launched browser settles, while the page
 * loads and while it makes its first image (median over the opens). --threads: the WASM thread counts of the page
 * rows (default 1,2). --ep adds page rows per ?ep= (`auto`: none given); the browser runs with its GPU disabled, so
 * `auto` measures what looking for a WebGPU adapter costs a page that then runs on WASM. Needs .venv-core,
 * `npm ci --prefix js` and Debian's chromium.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

import { FIT_RUN_JS, PYTHON, pythonEnv } from '../js/test/helpers.mjs';
import { CHROMIUM, cpuByThread, generateInPage, launchChromium, loadPuppeteer, machineTicks, settleBrowser,
  startFitWeb } from '../js/test/browser-helpers.mjs';
import { loadPackage } from '../js/src/node.js';

const option = (name) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const repeat = Number(option('--repeat')) || 5;
const pageRuns = Number(option('--page-runs')) || 3;
const pageOnly = process.argv.includes('--page-only');
const cpuProfile = process.argv.includes('--cpu');
const levels = option('--optimization')?.split(',') ?? [null];
const eps = option('--ep')?.split(',') ?? [null];
const threadCounts = option('--threads')?.split(',').map(Number) ?? [1, 2];
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
let cases = [];
if (CHROMIUM) {
  const puppeteer = await loadPuppeteer();
  const server = await startFitWeb();
  const settings = { width: 96, height: 64, class: 7, seed: 0 };
  cases = threadCounts.flatMap((threads) => levels.flatMap((level) => eps.map((ep) => ({ threads, level, ep, load: [],
    first: [], warm: [], phases: { 'browser start (launch to settled)': [], 'open to ready': [], 'first image': [] } }))));
  /** CPU use between two snapshots: {wall s, busy % of the machine, CPU s per thread group}. */
  const snapshot = (profile) => ({ at: performance.now(), machine: machineTicks(), threads: cpuByThread(profile) });
  function phase(a, b) {
    const groups = {};
    for (const [key, seconds] of b.threads) {
      const role = key.split('/')[0];
      const group = role !== 'renderer' ? 'browser, network and gpu processes'
        : { chromium: 'renderer main thread', ThreadPoolForeg: 'renderer background (V8 compiling, hashing)',
          DedicatedWorker: 'renderer WASM worker threads' }[key.split('/')[1]] ?? 'renderer other threads';
      groups[group] = (groups[group] ?? 0) + seconds - (a.threads.get(key) ?? 0);
    }
    const busy = (b.machine.busy - a.machine.busy) / (b.machine.total - a.machine.total);
    return { wall: (b.at - a.at) / 1000, busy: 100 * busy, groups };
  }
  /** Open the page in a fresh browser; times its load and first image (and warm images on the first run). */
  async function open(c, run) {
    const launched = cpuProfile && { at: performance.now(), machine: machineTicks(), threads: new Map() };
    const chromium = await launchChromium(puppeteer);
    const page = await chromium.browser.newPage();
    await settleBrowser(chromium);
    const settled = cpuProfile && snapshot(chromium.profile);
    const start = performance.now();
    await page.goto(`${server.url}?threads=${c.threads}${c.level ? `&optimization=${c.level}` : ''}`
      + `${c.ep && c.ep !== 'auto' ? `&ep=${c.ep}` : ''}`);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', { timeout: 120000, polling: 'mutation' });
    c.load.push((performance.now() - start) / 1000);
    const ready = cpuProfile && snapshot(chromium.profile);
    const first = await generateInPage(page, settings);
    if (first.state !== 'done') throw new Error(first.status);
    c.first.push((performance.now() - start) / 1000);
    if (cpuProfile) {
      const done = snapshot(chromium.profile);
      c.phases['browser start (launch to settled)'].push(phase(launched, settled));
      c.phases['open to ready'].push(phase(settled, ready));
      c.phases['first image'].push(phase(ready, done));
    }
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
    const label = [c.threads, c.level && `optimization ${c.level}`, c.ep && `ep ${c.ep}`].filter(Boolean).join(', ');
    browserRows.push([label, stat(c.load), stat(c.first),
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
  console.log('| default model, the package\'s sampler, cfg 4 | Python runtime | Node runtime | Node / Python |');
  console.log('|---|---:|---:|---:|');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
}
if (browserRows.length) {
  console.log(`\n| page in headless Chromium (${pageRuns} opens), WASM threads | open to ready | open to first 96x64 image | warm 96x64 image | cross-origin isolated |`);
  console.log('|---|---:|---:|---:|---|');
  for (const row of browserRows) console.log(`| ${row.join(' | ')} |`);
} else console.log('\n(no chromium: page not measured)');
if (cpuProfile && browserRows.length) {
  const pick = (xs, f) => median(xs.map(f));
  for (const c of cases) {
    const names = [...new Set(Object.values(c.phases).flatMap((runs) => runs.flatMap((r) => Object.keys(r.groups))))]
      .sort();
    console.log(`\nCPU, ${c.threads} WASM thread${c.threads === 1 ? '' : 's'}${c.level ? `, optimization ${c.level}` : ''} `
      + `(median of ${pageRuns} opens; CPU seconds per thread group; busy: share of all ${cpus().length} cores)`);
    console.log(`| phase | wall | busy | ${names.join(' | ')} |`);
    console.log(`|---|---:|---:|${names.map(() => '---:').join('|')}|`);
    for (const [name, runs] of Object.entries(c.phases)) {
      console.log(`| ${name} | ${ms(pick(runs, (r) => r.wall))} | ${pick(runs, (r) => r.busy).toFixed(0)} % | `
        + `${names.map((g) => pick(runs, (r) => r.groups[g] ?? 0).toFixed(2)).join(' | ')} |`);
    }
  }
}

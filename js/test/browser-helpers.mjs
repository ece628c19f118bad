/** Headless Chromium helpers shared by the browser test and benchmarks/js_runtime.mjs. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { PYTHON, REPO, pythonEnv } from './helpers.mjs';

/** puppeteer-core, resolved from js/node_modules. */
export async function loadPuppeteer() {
  return (await import('puppeteer-core')).default;
}

export const CHROMIUM = process.env.CHROMIUM || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Start fit-web on a free port (serving `pkg`, default the shipped model); resolves to {url, stop()}. */
export async function startFitWeb(pkg = null) {
  const server = spawn(PYTHON, ['-m', 'cli.web', ...(pkg ? [pkg] : []), '--port', '0', '-q'], { cwd: REPO, env: pythonEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: server.stdout }).once('line', resolve);
    server.once('exit', (code) => reject(new Error(`fit-web exited with ${code}`)));
  });
  return { url: JSON.parse(line).url, stop: () => server.kill() };
}

/** Chromium's software WebGPU: SwiftShader's Vulkan (shipped with Debian's chromium), fp32 only (no shader-f16). */
export const WEBGPU_ARGS = [...CHROMIUM_ARGS.filter((arg) => arg !== '--disable-gpu'), '--enable-unsafe-webgpu',
  '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader'];

/** Launch Chromium with a fresh profile (`webgpu`: with its software WebGPU adapter, else with the GPU disabled, so
 * without WebGPU); resolves to {browser, profile, close()}. */
export async function launchChromium(puppeteer, { webgpu = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'fit-chromium-'));
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
    args: [...(webgpu ? WEBGPU_ARGS : CHROMIUM_ARGS), `--user-data-dir=${profile}`] });
  return { browser, profile, close: async () => { await browser.close(); rmSync(profile, { recursive: true, force: true }); } };
}

/** Chromium's role of a process from its command line (which Chromium rewrites into one space-separated string):
 * renderer, network, gpu, utility or browser. */
function processRole(cmdline) {
  const type = cmdline.match(/--type=([a-z-]+)/)?.[1];
  if (!type) return 'browser';
  if (type === 'utility') return cmdline.includes('NetworkService') ? 'network' : 'utility';
  return type === 'gpu-process' ? 'gpu' : type;
}

/**
 * CPU seconds used so far by each thread of the processes whose command line names `needle`, summed by
 * "role/thread name" (e.g. `renderer/chromium` is a renderer's main thread, `renderer/ThreadPoolForeg` its
 * background threads, `renderer/DedicatedWorker` the WASM threads); Linux /proc, null elsewhere.
 */
export function cpuByThread(needle) {
  if (!existsSync('/proc/self/stat')) return null;
  const totals = new Map();
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (!cmdline.includes(needle)) continue;
      const role = processRole(cmdline);
      for (const tid of readdirSync(`/proc/${pid}/task`)) {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const key = `${role}/${name}`;
        totals.set(key, (totals.get(key) ?? 0) + (Number(fields[11]) + Number(fields[12])) / 100);   // utime+stime
      }
    } catch { /* the process or thread ended */ }
  }
  return totals;
}

/** CPU seconds used so far by the processes whose command line names `needle` (null off Linux). */
function cpuSeconds(needle) {
  const totals = cpuByThread(needle);
  return totals && [...totals.values()].reduce((a, b) => a + b, 0);
}

/** {busy, total} CPU ticks of the whole machine so far (/proc/stat), or null off Linux. */
export function machineTicks() {
  if (!existsSync('/proc/stat')) return null;
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - fields[3] - fields[4], total };                         // idle + iowait
}

/**
 * Wait until a just-launched browser has finished starting (its processes use under 5 % of one core over 300 ms,
 * at most `limitMs`), so that a page opened next is timed as in a running browser: right after launch Chromium
 * still starts a spare renderer and other services (about 0.4 s of CPU here), which would be counted in the page's
 * load otherwise. Returns the milliseconds waited.
 */
export async function settleBrowser(chromium, limitMs = 5000) {
  const start = performance.now();
  let before = cpuSeconds(chromium.profile);
  if (before === null) return 0;
  while (performance.now() - start < limitMs) {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const now = cpuSeconds(chromium.profile);
    if (now - before < 0.015) break;
    before = now;
  }
  return performance.now() - start;
}

/** Fill the form, click Generate and wait; returns {state, status}. One round trip to the page, as a user's click. */
export async function generateInPage(page, settings) {
  await page.evaluate((values) => {
    for (const [id, value] of Object.entries(values)) document.getElementById(id).value = value;
    document.body.dataset.state = 'waiting';
    document.getElementById('generate').click();
  }, Object.fromEntries(Object.entries(settings).map(([id, value]) => [id, String(value)])));
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state),
    { timeout: 120000, polling: 'mutation' });
  return page.evaluate(() => ({ state: document.body.dataset.state, status: document.getElementById('status').textContent }));
}

/** RGB pixels of the page's canvas. */
export async function canvasPixels(page) {
  const rgba = await page.evaluate(() => {
    const canvas = document.getElementById('image');
    return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
  });
  return Uint8Array.from(rgba.filter((_, i) => i % 4 !== 3));
}

/** Shared helpers of the JavaScript tests: paths, the Python reference runner, PSNR. */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as PNG_ZLIB from 'node:zlib';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const PYTHON = process.env.FIT_CORE_PYTHON || join(REPO, '.venv-core', 'bin', 'python');
export const PACKAGE = join(REPO, 'engines', 'default_model');
export const FIT_RUN_JS = join(REPO, 'js', 'bin', 'fit-run.mjs');
export const pythonEnv = { ...process.env, PYTHONPATH: REPO };

/** Why Python references cannot be made here, or null. */
export function pythonMissing() {
  return existsSync(PYTHON) ? null : `no runtime python at ${PYTHON} (run scripts/test.sh to build .venv-core)`;
}

/** Run js/test/reference.py on a job; returns {dir, index}. */
export function pythonReference(job) {
  const dir = mkdtempSync(join(tmpdir(), 'fit-js-ref-'));
  writeFileSync(join(dir, 'job.json'), JSON.stringify(job));
  execFileSync(PYTHON, [join(REPO, 'js', 'test', 'reference.py'), join(dir, 'job.json'), dir],
    { cwd: REPO, env: pythonEnv, stdio: ['ignore', 'inherit', 'inherit'] });
  return { dir, index: JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) };
}

/** Run a CLI; returns {status, stdout, stderr}. */
export function runCli(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: REPO, env: pythonEnv, encoding: 'utf8', ...options });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** PSNR in dB of two uint8 arrays (Infinity when identical). */
export function psnr(a, b) {
  let total = 0;
  for (let i = 0; i < a.length; i++) total += (a[i] - b[i]) ** 2;
  return total === 0 ? Infinity : 10 * Math.log10((255 * 255) / (total / a.length));
}

/** Decode an 8-bit RGB PNG (any filters, no interlace): {width, height, pixels, text}. */
export function readPng(path) {
  const { inflateSync } = PNG_ZLIB;
  const bytes = readFileSync(path);
  let offset = 8;
  let width = 0;
  let height = 0;
  const idat = [];
  const text = {};
  while (offset < bytes.length) {
    const length = bytes.readUInt32BE(offset);
    const type = bytes.toString('latin1', offset + 4, offset + 8);
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (data[8] !== 8 || data[9] !== 2 || data[12] !== 0) throw new Error(`${path}: not an 8-bit RGB PNG`);
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'tEXt') {
      const zero = data.indexOf(0);
      text[data.toString('latin1', 0, zero)] = data.toString('latin1', zero + 1);
    }
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 3;
  const pixels = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const value = raw[y * (stride + 1) + 1 + x];
      const a = x >= 3 ? pixels[y * stride + x - 3] : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x] : 0;
      const c = x >= 3 && y > 0 ? pixels[(y - 1) * stride + x - 3] : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      pixels[y * stride + x] = (value + predictor) & 0xff;
    }
  }
  return { width, height, pixels, text };
}

/** A file of float32 values. */
export function readFloat32(path) {
  return new Float32Array(new Uint8Array(readFileSync(path)).buffer);
}

/** The full-install python (with torch), for exporting test packages; null when missing. */
export const FULL_PYTHON = [process.env.FIT_FULL_PYTHON, join(REPO, '.venv', 'bin', 'python')].find((p) => p && existsSync(p)) ?? null;

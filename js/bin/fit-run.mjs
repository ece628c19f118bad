#!/usr/bin/env node
/**
 * fit-run for Node: generate images from a FiT model package on onnxruntime-node. Same flags, defaults, PNG text
 * chunks and errors as the Python `fit-run` (docs/runtime-spec.md §11): every mistake is one line on stderr,
 * exit status 2, and no output file is left behind.
 */
import { existsSync, statSync, accessSync, constants } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';

import { EXTRAPOLATIONS, MAX_CFG, MAX_STEPS, SAMPLERS, BackendError, GenerationError, PackageError,
  canonicalExtrapolation } from '../src/index.js';
import { SEED_LIMIT } from '../src/noise.js';
import { loadPackage, savePng } from '../src/node.js';
import { asFloat } from '../src/params.js';
import { tileImages } from '../src/png.js';

const PROG = 'fit-run';
const CHUNK = 8;                  // images sampled together in one step loop; each is written when its chunk ends
const MAX_GRID_PIXELS = 89478485; // what Pillow opens without a decompression-bomb warning (the Python fit-run's limit)

class UsageError extends Error {}

const OPTIONS = [
  { name: 'width', short: 'W', type: 'int', help: "Image width in pixels (default: the model's)." },
  { name: 'height', short: 'H', type: 'int', help: "Image height in pixels (default: the model's)." },
  { name: 'class', param: 'label', type: 'string', help: 'Class id or name, or a comma-separated list cycled over --num (default: unconditional).' },
  { name: 'num', short: 'n', type: 'int', min: 1, default: 1,
    help: 'Number of images; each is written as soon as it is done.' },
  { name: 'steps', type: 'int',
    help: `Sampler steps, 1 to ${MAX_STEPS.toLocaleString('en-US')} (default: the package's).` },
  { name: 'sampler', type: 'choice', choices: SAMPLERS, help: "Integrator (default: the package's)." },
  { name: 'cfg', type: 'float', help: `Classifier-free guidance scale, 0 to ${MAX_CFG}; 1 = off.` },
  { name: 'seed', type: 'bigint', default: 0n, help: 'Seed of image 1 (0 to 2**64 - 1); image i uses seed + i - 1.' },
  { name: 'extrapolation', type: 'named', choices: EXTRAPOLATIONS, resolve: canonicalExtrapolation,
    help: "RoPE extrapolation for sizes beyond training (default: the package's)." },
  { name: 'precision', type: 'string', help: 'Transformer variant: a name the package lists or a precision '
    + "(fp32, int8, fp16). Default: the package's default variant." },
  { name: 'threads', type: 'int', min: 0, default: 0, help: 'ONNX Runtime intra-op threads (0 = auto).' },
  { name: 'out', short: 'o', type: 'string', default: 'fit-run.png',
    help: 'Output PNG; several images become NAME-1.png, NAME-2.png, ... unless --grid.' },
  { name: 'grid', type: 'flag', help: 'Write several images as one grid PNG.' },
  { name: 'snap', type: 'flag', help: "Round a size off the model's pixel grid to the nearest valid one." },
  { name: 'quiet', short: 'q', type: 'flag', help: 'No progress bar.' },
];

function usage() {
  const lines = [`Usage: ${PROG} [OPTIONS] [PACKAGE]`, '',
    '  Generate images from a FiT model PACKAGE (default: engines/default_model/) on onnxruntime-node.', '', 'Options:'];
  for (const o of OPTIONS) {
    const flags = `${o.short ? `-${o.short}, ` : ''}--${o.name}${o.type === 'flag' ? '' : ' VALUE'}`;
    lines.push(`  ${flags.padEnd(26)}${o.help}${o.choices ? ` [${o.choices.join('|')}]` : ''}`);
  }
  lines.push(`  ${'-h, --help'.padEnd(26)}Show this message and exit.`);
  return lines.join('\n');
}

const label = (o) => `'--${o.name}'${o.short ? ` / '-${o.short}'` : ''}`;

function convert(o, text) {
  const invalid = (what) => new UsageError(`Invalid value for ${label(o)}: '${text}' is not a valid ${what}.`);
  if (o.type === 'int') {
    if (!/^\s*[-+]?\d+\s*$/.test(text)) throw invalid('integer');
    const value = Number(text);
    if (o.min !== undefined && value < o.min) {
      throw new UsageError(`Invalid value for ${label(o)}: ${value} is not in the range x>=${o.min}.`);
    }
    return value;
  }
  if (o.type === 'bigint') {
    if (!/^\s*[-+]?\d+\s*$/.test(text)) throw invalid('integer');
    return BigInt(text.trim());
  }
  if (o.type === 'float') {
    const value = Number(text);
    if (text.trim() === '' || Number.isNaN(value) && !/^\s*[-+]?nan\s*$/i.test(text)) throw invalid('float');
    return value;
  }
  if (o.type === 'named') {
    try {
      return o.resolve(text);
    } catch (err) {
      throw new UsageError(`Invalid value for ${label(o)}: ${err.message}`);
    }
  }
  if (o.type === 'choice') {
    const found = o.choices.find((c) => (o.caseless ? c.toLowerCase() === text.toLowerCase() : c === text));
    if (!found) {
      throw new UsageError(`Invalid value for ${label(o)}: '${text}' is not one of ${o.choices.map((c) => `'${c}'`).join(', ')}.`);
    }
    return found;
  }
  return text;
}

function parse(argv) {
  const values = Object.fromEntries(OPTIONS.map((o) => [o.name, o.type === 'flag' ? false : o.default ?? null]));
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') return null;
    if (arg === '--') { positional.push(...argv.slice(i + 1)); break; }
    if (arg.startsWith('-') && arg.length > 1) {
      const [flag, inline] = arg.startsWith('--') ? arg.split(/=(.*)/s, 2) : [arg.slice(0, 2), arg.length > 2 ? arg.slice(2) : undefined];
      const o = OPTIONS.find((opt) => (flag.startsWith('--') ? `--${opt.name}` === flag : opt.short && `-${opt.short}` === flag));
      if (!o) throw new UsageError(`No such option '${flag}'.`);
      if (o.type === 'flag') { values[o.name] = true; continue; }
      const text = inline ?? argv[++i];
      if (text === undefined) throw new UsageError(`Option '${flag}' requires an argument.`);
      values[o.name] = convert(o, text);
    } else positional.push(arg);
  }
  if (positional.length > 1) throw new UsageError(`Got unexpected extra argument (${positional.slice(1).join(' ')})`);
  return { ...values, package: positional[0] ?? null };
}

/** `out` for one image or a grid; `stem-1.png` ... `stem-N.png` for several (index 0-based). */
function outputPath(out, index, count, grid) {
  if (count === 1 || grid) return out;
  const ext = extname(out);
  return join(dirname(out), `${basename(out, ext)}-${index + 1}${ext}`);
}

/** Refuse, before any work, an output file that cannot be written (cli.common.check_writable). */
function checkWritable(path) {
  const folder = dirname(path) || '.';
  if (!existsSync(folder) || !statSync(folder).isDirectory()) throw new UsageError(`output folder ${folder} does not exist`);
  if (existsSync(path) && statSync(path).isDirectory()) throw new UsageError(`output ${path} is a folder`);
  try { accessSync(folder, constants.W_OK | constants.X_OK); } catch {
    throw new UsageError(`cannot write to ${folder}: permission denied`);
  }
}

function progressBar(quiet, total, title) {
  if (quiet || !process.stderr.isTTY) return { update() {}, close() {} };
  return {
    update(done) {
      const text = total ? `${title}: ${done}/${total}` : `${title}: ${done} steps`;
      process.stderr.write(`\r${text}`);
    },
    close() { process.stderr.write('\r\x1b[K'); },
  };
}

/** Generate the images CHUNK at a time and save each as it is done; yields the paths written. */
async function* run(a) {
  if (extname(a.out).toLowerCase() !== '.png') throw new GenerationError(`output ${a.out} must end in .png`);
  checkWritable(outputPath(a.out, 0, a.num, a.grid));       // numbered files all go to this same folder
  const pipe = await loadPackage(a.package ?? undefined, { threads: a.threads, precision: a.precision,
    warn: (message) => process.stderr.write(`${PROG}: warning: ${message}\n`) });
  try {
    const wanted = [a.width ?? pipe.defaultSize[0], a.height ?? pipe.defaultSize[1]];
    const size = pipe.checkSize(wanted[0], wanted[1], a.snap);
    if (size[0] !== wanted[0] || size[1] !== wanted[1]) {
      process.stderr.write(`${PROG}: snapped ${wanted[0]}x${wanted[1]} to ${size[0]}x${size[1]}\n`);
    }
    const classIds = a.class ? a.class.split(',').map((part) => pipe.resolveLabel(part)) : [pipe.resolveLabel(null)];
    const settings = pipe.settings({ steps: a.steps, sampler: a.sampler, cfg: a.cfg === null ? null : asFloat(a.cfg),
      extrapolation: a.extrapolation });
    const request = (i) => pipe.checkRequest({ width: size[0], height: size[1], label: classIds[i % classIds.length],
      seed: a.seed + BigInt(i) });
    request(0);                                               // size, class and seed of image 1, before any work
    const last = a.seed + BigInt(a.num - 1);
    if (a.seed >= 0n && last >= SEED_LIMIT) {
      throw new GenerationError(`--seed ${a.seed} with --num ${a.num} needs seeds up to ${last}; seeds must be below `
        + '2**64');
    }
    const pixels = a.num * size[0] * size[1];
    if (a.grid && a.num > 1 && pixels > MAX_GRID_PIXELS) {
      throw new GenerationError(`a grid of ${a.num} images of ${size[0]}x${size[1]} would have about `
        + `${pixels.toLocaleString('en-US')} pixels, more than Pillow opens without a decompression-bomb warning `
        + `(${MAX_GRID_PIXELS.toLocaleString('en-US')}); drop --grid`);
    }
    const method = settings.sampler.method;
    const chunks = Math.ceil(a.num / CHUNK);
    const bar = progressBar(a.quiet, method === 'dopri5' ? null : settings.sampler.steps * chunks, `${method} x${a.num}`);
    const gridImages = [];
    try {
      for (let first = 0, chunk = 0; first < a.num; first += CHUNK, chunk++) {
        const requests = [];
        for (let i = first; i < Math.min(a.num, first + CHUNK); i++) requests.push(request(i));
        const offset = chunk * (method === 'dopri5' ? 0 : settings.sampler.steps);
        const images = await pipe.generateMany(requests, { settings, onStep: (done) => bar.update(offset + done) });
        for (let i = 0; i < images.length; i++) {
          const image = images[i];
          if (a.grid && a.num > 1) gridImages.push(image);
          else {
            yield await savePng(outputPath(a.out, first + i, a.num, a.grid), image.pixels, image.width, image.height,
              image.parameters);
          }
        }
      }
    } finally {
      bar.close();
    }
    if (gridImages.length) {
      const grid = tileImages(gridImages);
      yield await savePng(a.out, grid.pixels, grid.width, grid.height, { grid: gridImages.map((im) => im.parameters) });
    }
  } finally {
    await pipe.release();
  }
}

/** The message with the API parameter at its start named by its flag (`cfg must ...` -> `--cfg must ...`). */
function flagged(err) {
  const message = String(err.message).trim().split('\n')[0] || err.name;
  const option = err.parameter ? OPTIONS.find((o) => (o.param ?? o.name) === err.parameter) : null;
  return option && message.startsWith(`${err.parameter} `) ? `--${option.name}${message.slice(err.parameter.length)}`
    : message;
}

const USER_ERRORS = [PackageError, BackendError, GenerationError, UsageError];

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (err) {
    process.stderr.write(`${PROG}: error: ${err.message}\n`);
    return 2;
  }
  if (args === null) { process.stdout.write(`${usage()}\n`); return 0; }
  // Ctrl-C: files are written synchronously (temporary name, rename), so every path printed is a complete file.
  let written = 0;
  process.once('SIGINT', () => {
    process.stderr.write(`${PROG}: interrupted; ${written} complete image file(s) written\n`);
    process.exit(130);
  });
  try {
    for await (const path of run(args)) {
      process.stdout.write(`${path}\n`);
      written += 1;
    }
    return 0;
  } catch (err) {
    if (USER_ERRORS.some((kind) => err instanceof kind) || err?.code) {
      process.stderr.write(`${PROG}: error: ${flagged(err)}\n`);
      return 2;
    }
    throw err;
  }
}

process.exitCode = await main(process.argv.slice(2));

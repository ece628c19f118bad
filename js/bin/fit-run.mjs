#!/usr/bin/env node
/**
 * fit-run for Node: generate images from a FiT model package on onnxruntime-node. Same flags, defaults, PNG text
 * chunks and errors as the Python `fit-run` (docs/runtime-spec.md §11): every mistake is one line on stderr,
 * exit status 2, and no output file is left behind.
 */
import { existsSync, statSync, accessSync, constants } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';

import { EXTRAPOLATIONS, MAX_CFG, MAX_STEPS, SAMPLERS, SHIFTED, BackendError, GenerationError, PackageError }
  from '../src/index.js';
import { loadPackage, savePng } from '../src/node.js';
import { pyNumber, pyTypeName } from '../src/params.js';
import { tileImages } from '../src/png.js';

const PROG = 'fit-run';
const CHUNK = 8;                  // images sampled together in one step loop; each is written when its chunk ends
const MAX_GRID_PIXELS = 89478485; // what Pillow opens without a decompression-bomb warning (the Python fit-run's limit)

class UsageError extends Error {}

// type "int"/"float": a request value handed to prepare as given, text that reads as a number as that number
// (cli.common.Passed); "text": handed on as it is; "count": checked here (click's IntRange).
const OPTIONS = [
  { name: 'width', short: 'W', type: 'int', help: "Image width in pixels (default: the model's)." },
  { name: 'height', short: 'H', type: 'int', help: "Image height in pixels (default: the model's)." },
  { name: 'class', param: 'label', type: 'text', help: 'Class id or name, or a comma-separated list cycled over --num (default: unconditional).' },
  { name: 'num', short: 'n', type: 'int', default: 1, help: 'Number of images; each is written as soon as it is done.' },
  { name: 'steps', type: 'int',
    help: `Sampler steps, 1 to ${MAX_STEPS.toLocaleString('en-US')} (default: the package's).` },
  { name: 'sampler', type: 'text', choices: SAMPLERS, help: "Integrator (default: the package's)." },
  { name: 'time-shift', param: 'time_shift', type: 'float', help: `Time shift S of the fixed-grid samplers `
    + `(${SHIFTED.join(', ')}): shorter steps near noise for S > 1 (default: the package's).` },
  { name: 'tail-compression', param: 'tail_compression', type: 'float', help: 'Tail compression C of the same '
    + "samplers, 0 to 1: each time t of the grid becomes t + C t (1 - t), shorter steps near data (default: the "
    + "package's)." },
  { name: 'cfg', type: 'float', help: `Classifier-free guidance scale, 0 to ${MAX_CFG}; 1 = off.` },
  { name: 'seed', type: 'int', default: 0, help: 'Seed of image 1 (0 to 2**64 - 1); image i uses seed + i - 1.' },
  { name: 'extrapolation', type: 'text', choices: EXTRAPOLATIONS,
    help: "RoPE extrapolation for sizes beyond training (default: the package's)." },
  { name: 'precision', type: 'text', help: 'Transformer variant: a name the package lists or a precision '
    + "(fp32, int8, fp16). Default: the package's default variant." },
  { name: 'threads', type: 'count', default: 0, help: 'ONNX Runtime intra-op threads (0 = auto).' },
  { name: 'out', short: 'o', type: 'text', default: 'fit-run.png',
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
  if (o.type === 'int' || o.type === 'float') return pyNumber(text, o.type);
  if (o.type === 'count') {
    if (!/^\s*[-+]?\d+\s*$/.test(text)) {
      throw new UsageError(`Invalid value for ${label(o)}: '${text}' is not a valid integer range.`);
    }
    const value = Number(text);
    if (value < 0) throw new UsageError(`Invalid value for ${label(o)}: ${value} is not in the range x>=0.`);
    return value;
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

/**
 * Check the request (prepare's arguments, as given), then generate its images CHUNK at a time and save each as it
 * is done; yields the paths written.
 */
async function* run(a) {
  if (extname(a.out).toLowerCase() !== '.png') throw new GenerationError(`output ${a.out} must end in .png`);
  // numbered files all go to this same folder
  checkWritable(outputPath(a.out, 0, pyTypeName(a.num) === 'int' ? a.num : 1, a.grid));
  const pipe = await loadPackage(a.package ?? undefined, { threads: a.threads, precision: a.precision,
    warn: (message) => process.stderr.write(`${PROG}: warning: ${message}\n`) });
  try {
    const jobs = pipe.prepare({ width: a.width, height: a.height, label: a.class, seed: a.seed, num: a.num,
      snap: a.snap, steps: a.steps, sampler: a.sampler, cfg: a.cfg, extrapolation: a.extrapolation,
      timeShift: a['time-shift'], tailCompression: a['tail-compression'] });
    const { width, height } = jobs.at(0).request;
    const wanted = [a.width || pipe.defaultSize[0], a.height || pipe.defaultSize[1]];
    if (width !== wanted[0] || height !== wanted[1]) {
      process.stderr.write(`${PROG}: snapped ${wanted[0]}x${wanted[1]} to ${width}x${height}\n`);
    }
    const num = jobs.length;
    const pixels = num * width * height;
    if (a.grid && num > 1 && pixels > MAX_GRID_PIXELS) {
      throw new GenerationError(`a grid of ${num} images of ${width}x${height} would have about `
        + `${pixels.toLocaleString('en-US')} pixels, more than Pillow opens without a decompression-bomb warning `
        + `(${MAX_GRID_PIXELS.toLocaleString('en-US')}); drop --grid`);
    }
    const { method, steps } = jobs.settings.sampler;
    const stepsPerChunk = method === 'dopri5' ? 0 : steps;
    const bar = progressBar(a.quiet, stepsPerChunk * Math.ceil(num / CHUNK) || null, `${method} x${num}`);
    const gridImages = [];
    try {
      for (let first = 0, chunk = 0; first < num; first += CHUNK, chunk++) {
        const offset = chunk * stepsPerChunk;
        const images = await pipe.generateMany(jobs.slice(first, first + CHUNK),
          { onStep: (done) => bar.update(offset + done) });
        for (let i = 0; i < images.length; i++) {
          const image = images[i];
          if (a.grid && num > 1) gridImages.push(image);
          else {
            yield await savePng(outputPath(a.out, first + i, num, a.grid), image.pixels, image.width, image.height,
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

/** The long flag of the option whose parameter name is `parameter` (cli.common.flag_of), or null. */
function flagOf(parameter) {
  const option = OPTIONS.find((o) => (o.param ?? o.name) === parameter);
  return option ? `--${option.name}` : null;
}

/**
 * The one-line message of a user error with API parameter names as flags (cli.common.render): the parameter at its
 * start, the other parameters it mentions, and its hint as ` (or pass --FLAG)`.
 */
function render(err) {
  let message = String(err.message).trim().split('\n')[0].trim() || err.name;
  const flag = err.parameter ? flagOf(err.parameter) : null;
  if (flag && message.startsWith(`${err.parameter} `)) message = flag + message.slice(err.parameter.length);
  for (const name of err.mentions ?? []) {
    const mentioned = flagOf(name);
    if (mentioned) message = message.replace(new RegExp(`(?<![\\w-])${name}(?= )`), mentioned);
  }
  const hint = err.hint ? flagOf(err.hint) : null;
  if (hint) message += ` (or pass ${hint})`;
  return message;
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
      process.stderr.write(`${PROG}: error: ${render(err)}\n`);
      return 2;
    }
    throw err;
  }
}

process.exitCode = await main(process.argv.slice(2));

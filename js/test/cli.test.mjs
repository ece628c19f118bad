/**
 * node js/bin/fit-run.mjs against the Python fit-run: same PNG text chunks and pixels for the same flags, and the
 * same one-line error (exit 2, no file left behind) for each user mistake, bad packages included.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { pyFloat } from '../src/params.js';
import { FIT_RUN_JS, PACKAGE, PYTHON, psnr, pythonMissing, readPng, runCli } from './helpers.mjs';

const missing = pythonMissing();
const fitRunPy = (args) => runCli(PYTHON, ['-m', 'cli.run', ...args]);
const fitRunJs = (args) => runCli(process.execPath, [FIT_RUN_JS, ...args]);

describe('node fit-run', { skip: missing ?? false }, () => {
  test('writes the same images and text chunks as fit-run', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fit-js-cli-'));
    const args = ['-W', '96', '-H', '64', '--class', 'star,ring', '--num', '2', '--seed', '11', '--steps', '5', '-q'];
    const py = fitRunPy([...args, '-o', join(dir, 'py.png')]);
    const js = fitRunJs([...args, '-o', join(dir, 'js.png')]);
    assert.equal(py.status, 0, py.stderr);
    assert.equal(js.status, 0, js.stderr);
    assert.deepEqual(js.stdout.trim().split('\n'), [join(dir, 'js-1.png'), join(dir, 'js-2.png')]);
    for (const i of [1, 2]) {
      const a = readPng(join(dir, `py-${i}.png`));
      const b = readPng(join(dir, `js-${i}.png`));
      assert.ok(psnr(a.pixels, b.pixels) >= 50);
      const strip = (text) => ({ ...text, 'fit:backend': null,
        parameters: text.parameters.replace(/"backend": "[^"]*"/, '') });
      assert.deepEqual(strip(b.text), strip(a.text));
      assert.equal(b.text['fit:backend'], 'onnxruntime-node');
    }
    const grid = fitRunJs([...args, '--grid', '-o', join(dir, 'grid.png')]);
    assert.equal(grid.status, 0, grid.stderr);
    const image = readPng(join(dir, 'grid.png'));
    assert.deepEqual([image.width, image.height], [2 * 96 + 2, 64]);
    assert.equal(JSON.parse(image.text.parameters).grid.length, 2);
  });

  test('--precision int8 runs the int8 variant like fit-run (>= 50 dB, same text chunks)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fit-js-int8-'));
    const args = ['-W', '80', '-H', '80', '--class', 'ring', '--seed', '4', '--steps', '6', '-q', '--precision', 'int8'];
    const py = fitRunPy([...args, '-o', join(dir, 'py.png')]);
    const js = fitRunJs([...args, '-o', join(dir, 'js.png')]);
    assert.equal(py.status, 0, py.stderr);
    assert.equal(js.status, 0, js.stderr);
    const a = readPng(join(dir, 'py.png'));
    const b = readPng(join(dir, 'js.png'));
    const db = psnr(a.pixels, b.pixels);
    console.log(`# int8: node fit-run vs fit-run ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
    assert.ok(db >= 50, `${db} dB`);
    assert.equal(b.text['fit:variant'], 'int8');
    const strip = (text) => ({ ...text, 'fit:backend': null, parameters: text.parameters.replace(/"backend": "[^"]*"/, '') });
    assert.deepEqual(strip(b.text), strip(a.text));
  });

  test('--time-shift and --tail-compression go to the engine as floats; their mistakes read as fit-run words them',
    () => {
    const dir = mkdtempSync(join(tmpdir(), 'fit-js-shift-'));
    const out = ['-W', '96', '-H', '64', '--steps', '3', '-q', '-o', join(dir, 'out.png')];
    const refused = [
      [['--time-shift', '0'], '--time-shift must be a number from 0.01 to 100, got 0.0'],
      [['--time-shift', '-1'], '--time-shift must be a number from 0.01 to 100, got -1.0'],
      [['--time-shift', 'nan'], '--time-shift must be a number from 0.01 to 100, got nan'],
      [['--time-shift', 'inf'], '--time-shift must be a number from 0.01 to 100, got inf'],
      [['--time-shift', 'abc'], "--time-shift must be a number from 0.01 to 100, got 'abc'"],
      [['--time-shift', '2', '--sampler', 'sde'],
        '--time-shift applies to euler, heun, ab2, unipc, not sde, which keeps its own schedule'],
      [['--tail-compression', '-1'], '--tail-compression must be a number from 0 to 1, got -1.0'],
      [['--tail-compression', '1.5'], '--tail-compression must be a number from 0 to 1, got 1.5'],
      [['--tail-compression', 'nan'], '--tail-compression must be a number from 0 to 1, got nan'],
      [['--tail-compression', 'x'], "--tail-compression must be a number from 0 to 1, got 'x'"],
      [['--tail-compression', '1', '--sampler', 'dopri5'],
        '--tail-compression applies to euler, heun, ab2, unipc, not dopri5, which keeps its own schedule'],
    ];
    for (const [args, message] of refused) {
      const js = fitRunJs([...out, ...args]);
      assert.equal(js.status, 2, `${args.join(' ')}: ${js.stderr}`);
      assert.equal(js.stderr, `fit-run: error: ${message}\n`);
      assert.equal(existsSync(join(dir, 'out.png')), false);
    }
    const packageSampler = JSON.parse(readFileSync(join(PACKAGE, 'manifest.json'), 'utf8')).sampler;
    const packageTail = packageSampler.tail_compression ? pyFloat(packageSampler.tail_compression) : undefined;
    for (const [args, sampler, shift, tail] of [
      [['--sampler', 'unipc', '--time-shift', '2.5', '--tail-compression', '0.5'], 'unipc', '2.5', '0.5'],
      [['--sampler', 'sde', '--time-shift', '1', '--tail-compression', '0'], 'sde', '1.0', undefined],
      [['--sampler', 'heun', '--tail-compression', '0'], 'heun', pyFloat(packageSampler.time_shift), undefined],
      [['--sampler', 'ab2'], 'ab2', pyFloat(packageSampler.time_shift), packageTail]]) {      // the package's grid
      const js = fitRunJs([...out, ...args]);
      assert.equal(js.status, 0, js.stderr);
      const { text } = readPng(join(dir, 'out.png'));
      assert.equal(text['fit:sampler'], sampler);
      assert.equal(text['fit:time_shift'], shift);
      assert.ok(text.parameters.includes(`"time_shift": ${shift}, `), text.parameters);
      assert.equal(text['fit:tail_compression'], tail);
      assert.equal(text.parameters.includes('tail_compression'), tail !== undefined, text.parameters);
    }
  });

  test('rejects every user mistake like fit-run: one line, exit 2, no file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fit-js-err-'));
    const corrupt = (name, change) => {
      const target = join(dir, name);
      cpSync(PACKAGE, target, { recursive: true });
      change(target);
      return target;
    };
    const badJson = corrupt('json', (p) => writeFileSync(join(p, 'manifest.json'), '{"format": '));
    const badHash = corrupt('hash', (p) => {
      const bytes = readFileSync(join(p, 'transformer.onnx'));
      bytes[1000] ^= 1;
      writeFileSync(join(p, 'transformer.onnx'), bytes);
    });
    const truncated = corrupt('trunc', (p) => truncateSync(join(p, 'transformer.onnx'), 1000));
    const notOnnx = corrupt('notonnx', (p) => {
      const garbage = Buffer.from('this is not an ONNX model');
      writeFileSync(join(p, 'transformer.onnx'), garbage);
      const doc = JSON.parse(readFileSync(join(p, 'manifest.json'), 'utf8'));
      doc.files['transformer.onnx'] = { sha256: createHash('sha256').update(garbage).digest('hex'), bytes: garbage.length };
      writeFileSync(join(p, 'manifest.json'), JSON.stringify(doc));
    });
    const cases = [
      ['-W', '90', '-H', '64'], ['-W', '512', '-H', '512'], ['-W', '0', '-H', '64'], ['--class', 'zebra'],
      ['--class', '9'], ['--steps', '0'], ['--cfg', '-1'], ['--sampler', 'bogus'], ['--extrapolation', 'foo'],
      ['--num', '0'], ['--width', 'abc'], ['--seed', '-1'], ['--out', join(dir, 'x.jpg')], ['--steps', '10001'],
      ['--cfg', 'nan'], ['--cfg', '1000.5'], ['--seed', '18446744073709551615', '--num', '2'], ['--precision', 'fp16'],
      ['--precision', 'bogus'], ['--extrapolation', 'ntk-fancy'],
      // request values go to the engine as given (a number when they read as one) and are worded there
      ['-W', '1.5'], ['-W', '-16'], ['-H', '1e3'], ['--num', '2.5'], ['--num', '100000000', '--grid'],
      ['--steps', '2.0'], ['--steps', '100000000000000000000'], ['--cfg', 'abc'], ['--cfg', '1e39'], ['--cfg', '-inf'],
      ['--seed', '1.5'], ['--seed', 'abc'], ['--seed', '18446744073709551616'], ['--class', ''], ['--class', '99'],
      ['--class', 'star,zebra'], ['--sampler', 'rk4'], ['--extrapolation', 'warp'], ['--extrapolation', ' Vision-NTK2'],
      ['-W', '4096', '-H', '4096'], ['--threads', '-1'], ['--threads', 'abc'],
      ['--out', join(dir, 'nowhere', 'x.png')], [join(dir, 'missing')], [badJson], [badHash], [truncated], [notOnnx],
    ];
    for (const args of cases) {
      const out = ['-W', '96', '-H', '64', '--steps', '2', '-q', '-o', join(dir, 'out.png')];
      const py = fitRunPy([...out, ...args]);
      const js = fitRunJs([...out, ...args]);
      assert.equal(js.status, 2, `${args.join(' ')}: ${js.stderr}`);
      assert.equal(py.status, 2, `${args.join(' ')}: ${py.stderr}`);
      // One error line; warnings before it as fit-run prints them (a tuned variant falling back to the standard one).
      const errorLine = (text) => text.trim().split('\n').filter((line) => !line.startsWith('fit-run: warning: '));
      assert.equal(errorLine(js.stderr).length, 1, js.stderr);
      assert.equal(js.stderr.split('\n').filter((l) => l.startsWith('fit-run: warning: ')).length,
        py.stderr.split('\n').filter((l) => l.startsWith('fit-run: warning: ')).length, js.stderr);
      assert.match(errorLine(js.stderr)[0], /^fit-run: error: /);
      // The parser's and ONNX Runtime's own detail after the colon differs between languages.
      const detail = { [badJson]: 'is not valid JSON: ', [notOnnx]: 'cannot load transformer.onnx: ' }[args[0]];
      const head = (text) => (detail ? text.slice(0, text.indexOf(detail) + detail.length) : text);
      assert.equal(head(errorLine(js.stderr)[0]), head(errorLine(py.stderr)[0]), args.join(' '));
      assert.equal(existsSync(join(dir, 'out.png')), false);
      assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.tmp')), []);
    }
  });
});

/**
 * The manifest reader (js/src/manifest.js, driven by the schema generated from engines/manifest.py) against
 * engines.manifest.Manifest.from_dict: the same one-line error for each broken manifest, and for the ones both
 * accept the same variants, referenced files and selected variant.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { Manifest, PackageError, select } from '../src/index.js';
import { allVariants } from '../src/manifest.js';
import { PACKAGE, pythonMissing, pythonReference } from './helpers.mjs';

const DOC = JSON.parse(readFileSync(join(PACKAGE, 'manifest.json'), 'utf8'));
const variant = (fields) => ({ name: 'extra', file: 'transformer.extra.onnx', precision: 'fp32', ...fields });

/** [what is changed, change] on a copy of the default model's manifest.json. */
const CASES = [
  ['nothing', () => {}],
  ['not an object', () => []],
  ['format', (d) => { d.format = 'other'; }],
  ['format_version', (d) => { d.format_version = 2; }],
  ['name type', (d) => { d.name = 5; }],
  ['model lacks patch_size', (d) => { delete d.model.patch_size; }],
  ['model.config type', (d) => { d.model.config = []; }],
  ['class_names count', (d) => { d.model.class_names = ['one']; }],
  ['latent lacks downsample', (d) => { delete d.latent.downsample; }],
  ['latent lacks scaling_factor', (d) => { delete d.latent.scaling_factor; }],
  ['latent lacks pixel_granularity', (d) => { delete d.latent.pixel_granularity; }],
  ['latent granularity', (d) => { d.latent.pixel_granularity = 12; }],
  ['latent.space', (d) => { d.latent.space = 'hsv'; }],
  ['latent null', (d) => { d.latent = null; }],
  ['transformer precision', (d) => { d.transformer.precision = 'int8'; }],
  ['transformer inputs type', (d) => { d.transformer.inputs = {}; }],
  ['tensor without a name', (d) => { d.transformer.inputs[0] = {}; }],
  ['tensor shape', (d) => { d.transformer.inputs[0].shape = 3; }],
  ['output name', (d) => { d.transformer.outputs[0].name = 'out'; }],
  ['variant file not listed', (d) => { d.transformer.variants.push(variant()); }],
  ['variant weights not listed', (d) => {
    d.transformer.variants.push(variant({ file: 'transformer.onnx', weights_from: 'weights.bin' }));
  }],
  ['variant lacks file', (d) => { d.transformer.variants.push({ name: 'extra', precision: 'fp32' }); }],
  ['variant precision', (d) => { d.transformer.variants[0].precision = 'bf16'; }],
  ['variant names', (d) => { d.transformer.variants[1].name = 'ort'; }],
  ['variants type', (d) => { d.transformer.variants = 'ort'; }],
  ['default_variant', (d) => { d.transformer.default_variant = 'nope'; }],
  ['default_variant int8', (d) => { d.transformer.default_variant = 'int8'; }],
  ['no variants', (d) => { delete d.transformer.variants; }],
  ['fp16 variant', (d) => {
    d.transformer.variants.push(variant({ name: 'fp16', file: 'transformer.fp16.onnx', precision: 'fp16' }));
    d.files['transformer.fp16.onnx'] = { sha256: '0'.repeat(64), bytes: 1 };
  }],
  ['legacy ort_optimized', (d) => {
    d.transformer.ort_optimized = { file: 'transformer.ort.onnx', runtime: 'onnxruntime', opset: 23 };
    d.transformer.variants = d.transformer.variants.filter((v) => v.name !== 'ort');
  }],
  ['guidance.default_scale', (d) => { d.guidance.default_scale = -1; }],
  ['guidance lacks default_scale', (d) => { delete d.guidance.default_scale; }],
  ['sampler.steps', (d) => { d.sampler.steps = 0; }],
  ['sampler.atol null', (d) => { d.sampler.atol = null; }],
  ['sampler.time_shift 0', (d) => { d.sampler.time_shift = 0; }],
  ['sampler.time_shift negative', (d) => { d.sampler.time_shift = -2.5; }],
  ['sampler.time_shift type', (d) => { d.sampler.time_shift = 'fast'; }],
  ['sampler lacks time_shift', (d) => { delete d.sampler.time_shift; }],
  ['sampler.tail_compression negative', (d) => { d.sampler.tail_compression = -0.5; }],
  ['sampler.tail_compression above 1', (d) => { d.sampler.tail_compression = 1.5; }],
  ['sampler.tail_compression type', (d) => { d.sampler.tail_compression = '1'; }],
  ['sampler.tail_compression 1', (d) => { d.sampler.tail_compression = 1; }],
  ['sampler lacks tail_compression', (d) => { delete d.sampler.tail_compression; }],
  ['sizes.max_tokens type', (d) => { d.sizes.max_tokens = 'many'; }],
  ['sizes.default', (d) => { d.sizes.default = [80]; }],
  ['bucket lacks tokens', (d) => { delete d.sizes.buckets[0].tokens; }],
  ['rope lacks ori_max_pe_len', (d) => { delete d.rope.ori_max_pe_len; }],
  ['rope.ori_max_pe_len null', (d) => { d.rope.ori_max_pe_len = null; }],
  ['vae_decoder null', (d) => { d.vae_decoder = null; delete d.files['vae_decoder.onnx']; }],
  ['vae_decoder type', (d) => { d.vae_decoder = 'vae.onnx'; }],
  ['decoder file not listed', (d) => { delete d.files['vae_decoder.onnx']; }],
  ['decoder input name', (d) => { d.vae_decoder.inputs[0].name = 'z'; }],
  ['decoder without names', (d) => { d.vae_decoder.inputs = []; d.vae_decoder.outputs = []; }],
  ['reference weights not listed', (d) => { d.reference.weights = 'weights.safetensors'; }],
  ['file outside the package', (d) => { d.files['../x'] = { sha256: '0', bytes: 1 }; }],
  ['file entry lacks bytes', (d) => { delete d.files['transformer.onnx'].bytes; }],
  ['file entry type', (d) => { d.files['transformer.onnx'] = 'abc'; }],
  ['files type', (d) => { d.files = []; }],
];

/** The cases both readers accept; every other one is refused. */
const ACCEPTED = ['nothing', 'default_variant int8', 'no variants', 'fp16 variant', 'legacy ort_optimized',
  'sampler.atol null', 'sampler lacks time_shift', 'sampler.tail_compression 1', 'sampler lacks tail_compression',
  'rope.ori_max_pe_len null', 'vae_decoder null', 'decoder without names'];

/** What js/src/manifest.js makes of a manifest object, in the shape of reference.py's read_manifest. */
function readManifest(doc) {
  let manifest;
  try {
    manifest = Manifest.fromDict(doc);
  } catch (err) {
    if (!(err instanceof PackageError)) throw err;
    return { error: err.message };
  }
  const selected = {};
  for (const [precision, fp16] of [[null, false], ['fp32', false], ['int8', false], [null, true], ['fp32', true]]) {
    const key = `${precision ?? 'None'}${fp16 ? ' fp16' : ''}`;
    try {
      selected[key] = select(manifest.transformer, 'onnxruntime', precision, true, fp16).name;
    } catch (err) {
      selected[key] = err.message;
    }
  }
  return { variants: allVariants(manifest.transformer).map((v) => [v.name, v.file, v.weights_from]),
    referenced: manifest.referencedFiles(), selected };
}

test('manifest objects read as engines.manifest reads them', { skip: pythonMissing() ?? false }, () => {
  const docs = CASES.map(([, change]) => {
    const doc = structuredClone(DOC);
    return change(doc) ?? doc;
  });
  const ref = pythonReference({ manifests: docs });
  docs.forEach((doc, i) => assert.deepEqual(readManifest(doc), ref.index.manifests[i], CASES[i][0]));
  assert.deepEqual(CASES.filter((_, i) => !ref.index.manifests[i].error).map(([name]) => name), ACCEPTED);
});

test('defaults fill what a manifest leaves out; unknown fields are ignored', () => {
  const doc = structuredClone(DOC);
  delete doc.sampler.atol;
  delete doc.sampler.time_shift;
  delete doc.sampler.tail_compression;
  delete doc.vae_decoder.input_is_scaled;
  doc.guidance.a_later_field = 1;
  const manifest = Manifest.fromDict(doc);
  assert.equal(manifest.sampler.atol, 1e-6);
  assert.equal(manifest.sampler.time_shift, 1);
  assert.equal(manifest.sampler.tail_compression, 0);
  assert.equal(manifest.vae_decoder.input_is_scaled, false);
  assert.equal(manifest.guidance.a_later_field, undefined);
  assert.deepEqual(manifest.reference, DOC.reference);
  assert.equal(manifest.transformer.inputs[0].dtype, 'float32');
});

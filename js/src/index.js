/**
 * FiT runtime for JavaScript: one core for Node (onnxruntime-node) and the browser (onnxruntime-web); the entry
 * point injects the ONNX Runtime module and chooses where the package's files come from.
 *
 *   import * as ort from 'onnxruntime-web';
 *   import { FitPipeline } from 'fit-runtime';
 *   const pipe = await FitPipeline.load('/package/', { ort });      // a URL: read with fetchIO
 *   const { pixels, width, height, parameters } = await pipe.generate({ width: 96, height: 64, label: 'star', seed: 1 });
 *   const images = await pipe.generateMany(pipe.prepare({ width: 96, height: 64, label: 'star,ring', num: 2 }));
 *
 * In Node, fit-runtime/node (node.js) opens a directory: loadPackage(dir), or FitPipeline.load(directoryIO(dir), ...).
 * @module fit-runtime
 */

export { FitPipeline } from './pipeline.js';
export { GenerationError, Limits, ENGINE_LIMITS, Request, GenerationSettings, Job, Jobs } from './request.js';
export { PackageError, BackendError } from './errors.js';
export { fetchIO, loadManifest } from './package.js';
export { Manifest, select } from './manifest.js';
export { GraphContract, PaddedBatch, VaeDecoderContract, patchify, unpatchify } from './contract.js';
export { EXTRAPOLATIONS, EXTRAPOLATION_ALIASES, METHODS, ropeTables, axisFrequencies, attentionScale, resolveMethod,
  canonicalExtrapolation, extrapolationName } from './rope.js';
export { SAMPLERS, SHIFTED, MAX_STEPS, MAX_CFG, SettingError, checkSteps, checkTimeShift, checkCfg }
  from './sampler.js';
export { normals, checkSeed } from './noise.js';
export { pngBytes, textEntries, tileImages } from './png.js';
export { pyJson, plain } from './params.js';

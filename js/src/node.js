/**
 * The Node entry point: package files from a directory (node:fs, node:crypto), onnxruntime-node, atomic PNG files.
 * The core modules never import this one; it chooses their IO.
 * @module fit-runtime/node
 */

import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';

import { PackageError } from './errors.js';
import { MANIFEST_NAME } from './manifest.js';
import { FitPipeline } from './pipeline.js';
import { pngBytes } from './png.js';

/** engines/default_model/ of the repository this package lives in. */
export const DEFAULT_MODEL_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'engines', 'default_model');

/**
 * Package files from a local directory.
 * @param {string} directory
 * @returns {import('./package.js').PackageIO}
 */
export function directoryIO(directory) {
  const manifestPath = join(directory, MANIFEST_NAME);
  return {
    label: directory,
    manifestPath,
    async readManifest() {
      let isDir = false;
      try { isDir = statSync(directory).isDirectory(); } catch { isDir = false; }
      if (!isDir) throw new PackageError(`package ${directory} does not exist or is not a directory`);
      try {
        return readFileSync(manifestPath, 'utf8');
      } catch (err) {
        if (err.code === 'ENOENT') throw new PackageError(`package ${directory} has no ${MANIFEST_NAME}`);
        throw new PackageError(`cannot read ${manifestPath}: ${err.message}`);
      }
    },
    async readFile(name) {
      try {
        return new Uint8Array(readFileSync(join(directory, name)));
      } catch (err) {
        if (err.code === 'ENOENT') throw new PackageError(`package ${directory}: ${name} is missing; re-export the package`);
        throw new PackageError(`cannot read ${join(directory, name)}: ${err.message}`);
      }
    },
    async sha256(bytes) {
      return createHash('sha256').update(bytes).digest('hex');
    },
    filePath: (name) => join(directory, name),
  };
}

/**
 * Open a package directory (the repository's default model when omitted) on onnxruntime-node.
 * @param {string} [directory]
 * @param {Partial<import('./pipeline.js').LoadOptions>} [options]
 */
export async function loadPackage(directory, options = {}) {
  const ort = options.ort ?? await import('onnxruntime-node');
  const dir = directory ?? DEFAULT_MODEL_DIR;
  return FitPipeline.load(directoryIO(dir), { backendName: 'onnxruntime-node', ...options, ort });
}

/**
 * Write an RGB image as PNG with its parameters (png.js pngBytes), atomically (temporary file in the target folder,
 * fsync, rename).
 * @param {string} path
 * @param {Uint8Array} pixels
 * @param {number} width
 * @param {number} height
 * @param {Record<string, any>|null} parameters
 */
export async function savePng(path, pixels, width, height, parameters) {
  const bytes = await pngBytes(pixels, width, height, parameters, (data) => deflateSync(data));
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const fd = openSync(tmp, 'w', 0o666);
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (err) {
    try { closeSync(fd); } catch { /* already closed */ }
    try { unlinkSync(tmp); } catch { /* not created */ }
    throw err;
  }
  return path;
}

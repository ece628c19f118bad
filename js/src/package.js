/**
 * Reading a package (engines/package.py): where its files come from (fetch here, a directory in node.js), its
 * manifest, and its files checked against the manifest's sizes and sha256 hashes.
 * @module package
 */

import { PackageError, firstLine } from './errors.js';
import { MANIFEST_NAME, Manifest } from './manifest.js';

/**
 * Where a package's files come from; chosen by the entry point ({@link fetchIO} in a page, directoryIO of
 * node.js in Node).
 * @typedef {object} PackageIO
 * @property {string} label how messages name the package
 * @property {string} manifestPath how messages name its manifest
 * @property {() => Promise<string>} readManifest the text of manifest.json (throws PackageError)
 * @property {(name: string) => Promise<Uint8Array>} readFile a file's bytes (throws PackageError when missing)
 * @property {(bytes: Uint8Array) => Promise<string>} sha256 lowercase hex digest
 * @property {(name: string) => string} [filePath] a local path ONNX Runtime can open (Node; external data)
 */

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * Package files over fetch (a page, or Node with a URL); sha256 with WebCrypto.
 * @param {string} base URL of the package folder (relative to the page's address in a browser)
 * @returns {PackageIO}
 */
export function fetchIO(base) {
  const root = base.endsWith('/') ? base : `${base}/`;
  const label = root.replace(/\/$/, '');
  async function get(name) {
    let response;
    try {
      response = await fetch(new URL(name, new URL(root, globalThis.location?.href)));
    } catch (err) {
      throw new PackageError(`package ${label}: cannot read ${name} (${err.message})`);
    }
    return response;
  }
  return {
    label,
    manifestPath: `${root}${MANIFEST_NAME}`,
    async readManifest() {
      const response = await get(MANIFEST_NAME);
      if (!response.ok) throw new PackageError(`package ${label} has no ${MANIFEST_NAME} (HTTP ${response.status})`);
      return response.text();
    },
    async readFile(name) {
      const response = await get(name);
      if (!response.ok) throw new PackageError(`package ${label}: ${name} is missing; re-export the package`);
      return new Uint8Array(await response.arrayBuffer());
    },
    async sha256(bytes) {
      return hex(await globalThis.crypto.subtle.digest('SHA-256', bytes));
    },
  };
}

/**
 * The bytes of the package files `names`, each checked against the manifest (listed, size, sha256) unless
 * `verified` already holds it; `verified` (names checked before) is updated, null skips the checks. The bytes
 * checked are the bytes returned, so what ONNX Runtime gets is what was hashed.
 * @param {PackageIO} io
 * @param {Manifest} manifest
 * @param {string[]} names
 * @param {Set<string>|null} verified
 * @returns {Promise<Uint8Array[]>}
 */
export async function verifyFiles(io, manifest, names, verified) {
  const out = [];
  for (const name of names) {
    const entry = manifest.files[name];
    if (verified && !entry) throw new PackageError(`package ${io.label}: ${name} is not listed in ${MANIFEST_NAME}`);
    const bytes = await io.readFile(name);
    if (verified && !verified.has(name)) {
      if (bytes.length !== entry.bytes) {
        throw new PackageError(`package ${io.label}: ${name} has ${bytes.length} bytes, the manifest says `
          + `${entry.bytes} (truncated or replaced); re-export the package`);
      }
      if (await io.sha256(bytes) !== entry.sha256) {
        throw new PackageError(`package ${io.label}: sha256 of ${name} does not match the manifest `
          + '(corrupt or replaced); re-export the package');
      }
      verified.add(name);
    }
    out.push(bytes);
  }
  return out;
}

/**
 * Read and check a package's manifest.json; PackageError with a one-line message on any problem.
 * @param {PackageIO} io
 * @returns {Promise<Manifest>}
 */
export async function loadManifest(io) {
  const text = await io.readManifest();
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new PackageError(`${io.manifestPath} is not valid JSON: ${firstLine(err)}`);
  }
  return Manifest.fromDict(doc, io.manifestPath);
}

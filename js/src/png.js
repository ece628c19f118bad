/**
 * Images out (engines/png.py): 8-bit RGB images tiled into one, and PNG files whose text chunks carry the generation
 * parameters; the zlib deflate is injected (node:zlib or CompressionStream). Writing files is in node.js (savePng).
 * @module png
 */

import { pyJson, pyStr } from './params.js';

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

const isLatin1 = (text) => [...text].every((ch) => ch.codePointAt(0) < 256);
const latin1 = (text) => Uint8Array.from([...text], (ch) => ch.codePointAt(0));
const utf8 = (text) => new TextEncoder().encode(text);

function textChunk(key, value) {
  if (isLatin1(value)) return chunk('tEXt', new Uint8Array([...latin1(key), 0, ...latin1(value)]));
  return chunk('iTXt', new Uint8Array([...latin1(key), 0, 0, 0, 0, 0, ...utf8(value)]));
}

/**
 * The text entries of a PNG for `parameters`: `parameters` (JSON of all), then `fit:<key>` per parameter.
 * @param {Record<string, any>} parameters
 * @returns {[string, string][]}
 */
export function textEntries(parameters) {
  const entries = [['parameters', pyJson(parameters)]];
  for (const [key, value] of Object.entries(parameters)) {
    entries.push([`fit:${key}`, value === null || value === undefined ? '' : pyStr(value)]);
  }
  return entries;
}

/**
 * @typedef {object} RgbImage
 * @property {Uint8Array} pixels RGB, height x width x 3
 * @property {number} width
 * @property {number} height
 */

/**
 * Tile images of any sizes into one, row by row, `gap` black pixels apart (`columns` per row, default the
 * square root of their number rounded up).
 * @param {RgbImage[]} images
 * @param {number|null} [columns]
 * @param {number} [gap]
 * @returns {RgbImage}
 */
export function tileImages(images, columns = null, gap = 2) {
  const cols = columns || Math.ceil(Math.sqrt(images.length));
  const rows = [];
  for (let i = 0; i < images.length; i += cols) rows.push(images.slice(i, i + cols));
  const rowHeights = rows.map((row) => Math.max(...row.map((im) => im.height)));
  const colWidths = Array.from({ length: cols },
    (_, c) => Math.max(...rows.filter((r) => c < r.length).map((r) => r[c].width)));
  const width = colWidths.reduce((a, b) => a + b, 0) + gap * (cols - 1);
  const height = rowHeights.reduce((a, b) => a + b, 0) + gap * (rows.length - 1);
  const pixels = new Uint8Array(width * height * 3);
  let top = 0;
  rows.forEach((row, r) => {
    let left = 0;
    row.forEach((im, c) => {
      for (let y = 0; y < im.height; y++) {
        pixels.set(im.pixels.subarray(y * im.width * 3, (y + 1) * im.width * 3), ((top + y) * width + left) * 3);
      }
      left += colWidths[c] + gap;
    });
    top += rowHeights[r] + gap;
  });
  return { pixels, width, height };
}

/**
 * The PNG file of RGB pixels (height x width x 3), with `parameters` as text chunks: `parameters` (all of them as
 * JSON) and one `fit:<name>` entry per parameter.
 * @param {Uint8Array} pixels
 * @param {number} width
 * @param {number} height
 * @param {Record<string, any>|null} parameters
 * @param {(data: Uint8Array) => Promise<Uint8Array>|Uint8Array} deflate zlib-format compression
 * @returns {Promise<Uint8Array>}
 */
export async function pngBytes(pixels, width, height, parameters, deflate) {
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8);
  const stride = width * 3;
  const raw = new Uint8Array((stride + 1) * height);
  for (let y = 0; y < height; y++) raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', header)];
  for (const [key, value] of parameters ? textEntries(parameters) : []) parts.push(textChunk(key, value));
  parts.push(chunk('IDAT', await deflate(raw)), chunk('IEND', new Uint8Array(0)));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) { out.set(part, offset); offset += part.length; }
  return out;
}

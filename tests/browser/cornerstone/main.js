// Loads every frame of the given series from a DICOMweb root the way OHIF does (series
// metadata registered with the wadors metadata manager, `wadors:` image ids, OHIF's Accept),
// decodes them with Cornerstone's own workers and codecs, and leaves the decoded pixel
// values in `window.result` for the test to compare with pydicom.
//
// Job (query parameter `job`, JSON): {root, accept, series: [{study, series}]}.
import { init as initCore, imageLoader } from '@cornerstonejs/core';
import { init as initLoader, wadors } from '@cornerstonejs/dicom-image-loader';

const job = JSON.parse(new URLSearchParams(location.search).get('job'));

function toBase64(typedArray) {
  const bytes = new Uint8Array(typedArray.buffer, typedArray.byteOffset, typedArray.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

async function seriesMetadata(study, series) {
  const url = `${job.root}/studies/${study}/series/${series}/metadata`;
  const response = await fetch(url, { headers: { Accept: 'application/dicom+json' } });
  if (!response.ok) {
    throw new Error(`${url} answered ${response.status}`);
  }
  return response.json();
}

async function decodeSeries(study, series) {
  const decoded = [];
  for (const instance of await seriesMetadata(study, series)) {
    const sop = instance['00080018'].Value[0];
    const frames = Number(instance['00280008']?.Value?.[0] ?? 1);
    const base = `wadors:${job.root}/studies/${study}/series/${series}/instances/${sop}/frames/`;
    for (let frame = 1; frame <= frames; frame++) {
      wadors.metaDataManager.add(base + frame, instance);
    }
    for (let frame = 1; frame <= frames; frame++) {
      // No modality LUT applied: the stored values, as pydicom's pixel_array gives them.
      const image = await imageLoader.loadAndCacheImage(base + frame, {
        preScale: { enabled: false },
      });
      const pixels = image.getPixelData();
      decoded.push({
        sop,
        frame,
        rows: image.rows,
        columns: image.columns,
        color: Boolean(image.color),
        samples: pixels.length / (image.rows * image.columns),
        type: pixels.constructor.name,
        transferSyntax: image.transferSyntaxUID ?? null,
        pixels: toBase64(pixels),
      });
    }
  }
  return decoded;
}

async function run() {
  initCore();
  initLoader({ maxWebWorkers: 2, beforeSend: () => ({ Accept: job.accept }) });
  const images = [];
  for (const { study, series } of job.series) {
    images.push(...(await decodeSeries(study, series)));
  }
  return images;
}

run().then(
  (images) => {
    window.result = { ok: true, images };
    document.getElementById('status').textContent = `decoded ${images.length} frames`;
  },
  (error) => {
    // The loader rejects with the XMLHttpRequest itself when a request fails.
    const text = error instanceof XMLHttpRequest
      ? `request failed: ${error.status} ${error.responseURL || '(blocked, see network)'}`
      : String(error?.stack ?? error);
    console.error('decode check failed:', text);
    window.result = { ok: false, error: text };
    document.getElementById('status').textContent = 'failed';
  },
);

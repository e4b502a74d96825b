// Builds the decode-check page. Cornerstone3D 5.x with vite 7 needs: ES-module workers, the
// image loader left out of dependency pre-bundling (its worker URL must survive), dicom-parser
// converted from CommonJS, and `events` (a Node built-in the loader imports) taken from npm.
import { createRequire } from 'node:module';
import { viteCommonjs } from '@originjs/vite-plugin-commonjs';
import { defineConfig } from 'vite';

const require = createRequire(import.meta.url);

export default defineConfig({
  root: import.meta.dirname,
  base: './',
  logLevel: 'error',
  plugins: [viteCommonjs()],
  resolve: { alias: { events: require.resolve('events/') } },
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser'],
  },
  worker: { format: 'es' },
  build: {
    outDir: process.env.FRAMECDN_CORNERSTONE_OUT ?? 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 100000,
    reportCompressedSize: false,
  },
});

// Tests are written in TypeScript and compiled by `npm run build` (tsc) before ava runs:
// worker threads on Node 20 cannot load .ts files, so everything runs as compiled JS.
export default {
  files: ['test/**/*.test.ts'],
  typescript: {
    rewritePaths: { 'test/': 'dist/test/' },
    compile: false,
  },
  timeout: '60s',
};

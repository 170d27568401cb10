/** Seeded randomness for tests (the project's mulberry32): the same lists and frames on every run. */
export { mulberry32 as rng } from '../../src/util/rng.js';

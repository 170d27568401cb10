/**
 * `iommud bench --plot FILE.svg`: the parallel scaling and the invalidation batching results of a run
 * as one SVG chart, drawn by Vega-Lite (compiled to Vega, rendered headless by a Vega View with no
 * DOM). Vega is loaded only when a plot is asked for.
 */
import type { TopLevelSpec } from 'vega-lite';
import type { Measurement } from './harness.js';
import { batchingPoints } from './iotlb.js';
import { scalingPoints } from './parallel.js';

/** The suites whose results can be drawn. */
export const PLOTTED_SUITES = ['parallel', 'iotlb'] as const;

/**
 * A row of panels, one per value of `column` (in `order`), each drawing `lines`: series as lines with
 * points, plus whatever `extra` layers add.
 */
function panels(title: string, values: object[], column: string, order: string[], lines: object, extra: object[] = [], resolve?: object): object {
  return {
    title,
    data: { values },
    facet: { column: { field: column, type: 'nominal', title: null, sort: order } },
    spec: { width: 260, height: 200, layer: [{ mark: { type: 'line', point: true }, encoding: lines }, ...extra] },
    ...(resolve ? { resolve } : {}),
  };
}

function scalingChart(points: ReturnType<typeof scalingPoints>): object {
  return panels(
    'Parallel scaling: speed-up over inline (median of per-repetition ratios)',
    points,
    'op',
    ['map, new tables', 'map, tables present', 'unmap'],
    {
      x: { field: 'workers', type: 'quantitative', title: 'workers', axis: { tickMinStep: 1 }, scale: { domain: [0, 2] } },
      y: { field: 'speedup', type: 'quantitative', title: 'speed-up (×)' },
      color: { field: 'list', type: 'nominal', title: 'list', scale: { scheme: 'tableau20' } },
    },
    // Speed-up 1: no better than inline.
    [{ mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' }, encoding: { y: { datum: 1 } } }],
  );
}

function batchingChart(points: ReturnType<typeof batchingPoints>): object {
  return panels(
    'Invalidation batching: map_sg + one batch vs per-segment map/unmap (invalidateOnMap domains)',
    points,
    'metric',
    ['syncs per round', 'modelled invalidation µs per round', 'wall µs per round (map + unmap)'],
    {
      x: { field: 'segments', type: 'quantitative', title: '4K segments per list', scale: { type: 'log', base: 2 } },
      y: { field: 'value', type: 'quantitative', title: null, scale: { type: 'log' } },
      color: { field: 'strategy', type: 'nominal', title: 'strategy' },
    },
    [],
    { scale: { y: 'independent' } },
  );
}

/** Whether a run's measurements have anything to draw. */
export function plottable(ms: readonly Measurement[]): boolean {
  return scalingPoints(ms).length > 0 || batchingPoints(ms).length > 0;
}

/** The chart of a run's scaling and batching results, as an SVG document. */
export async function plotSvg(ms: readonly Measurement[], title: string): Promise<string> {
  const scaling = scalingPoints(ms);
  const batching = batchingPoints(ms);
  const charts = [...(scaling.length > 0 ? [scalingChart(scaling)] : []), ...(batching.length > 0 ? [batchingChart(batching)] : [])];
  if (charts.length === 0) throw new Error('nothing to plot: the run has no parallel scaling or batching results');
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    vconcat: charts,
    // Each chart keeps its own colours and legend.
    resolve: { scale: { color: 'independent' } },
    config: { font: 'sans-serif', legend: { labelLimit: 0 } },
  } as TopLevelSpec;
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

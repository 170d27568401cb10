/**
 * One client connection: frames in, requests sequenced into the engine, responses out.
 *
 * Flow control: the socket is paused while its write buffer is full (the client is not reading its
 * responses) and while it has `maxInflight` requests in flight or waiting, so one connection can
 * neither grow the daemon's memory without bound nor starve the others.
 *
 * Ending: on the client's end of stream (it may half-close and still read) or on a server shutdown,
 * every request already read is answered before the socket is ended. A frame longer than the maximum
 * gets EMSGSIZE, and the connection is ended the same way (the byte stream cannot be re-framed).
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { FaultError } from '../core/devices.js';
import { IommuError } from '../errors/errors.js';
import { encodeFrame, FrameReader } from '../protocol/frame.js';
import { errorResponse, errorResponseFor, okResponse, parseRequest, RequestError, type RequestId, type Response } from '../protocol/messages.js';
import { OPS, type ArgsOf, type OpName } from '../protocol/schema.js';
import { HANDLERS, type Handler } from './handlers.js';
import { Sequencer } from './sequencer.js';
import { Session, type Daemon } from './session.js';

/** After we end our side, how long the peer has to close its side before the socket is destroyed. */
const LINGER_MS = 2000;

export class Connection {
  private readonly reader: FrameReader;
  private readonly sequencer = new Sequencer();
  private readonly session: Session;
  private readonly log: Logger;
  /** No more requests are read: shutdown, oversize frame, or the client ended its side. */
  private stopReading = false;
  private writeBlocked = false;
  private paused = false;
  private ending = false;
  private closed = false;
  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };
  readonly gone: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly daemon: Daemon,
    readonly id: number,
  ) {
    this.session = new Session(daemon);
    this.log = daemon.log.child({ conn: id });
    this.reader = new FrameReader(daemon.maxFrame, {
      frame: (body) => this.onFrame(body),
      oversize: (length) => this.onOversize(length),
    });
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => {
      if (!this.stopReading) this.reader.push(chunk);
      this.updateFlow();
    });
    socket.on('drain', () => {
      this.writeBlocked = false;
      this.updateFlow();
    });
    socket.on('end', () => {
      this.stopReading = true;
      this.endWhenAnswered();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ err: err.message, code: err.code }, 'socket error'));
    this.gone = new Promise((resolve) => {
      socket.once('close', () => {
        this.closed = true;
        // Requests already issued still take effect (their answers are dropped); then the session ends.
        void this.sequencer.whenIdle()
          .then(() => this.session.end())
          .catch((e: unknown) => this.log.error({ err: e }, 'releasing the connection\'s objects failed'))
          .finally(() => {
            this.log.debug({ tenant: this.session.tenant.name }, 'connection closed');
            resolve();
          });
      });
    });
  }

  /** Server shutdown: read nothing more, answer what was read, then end. Resolves when closed. */
  shutdown(): Promise<void> {
    this.stopReading = true;
    this.updateFlow();
    this.endWhenAnswered();
    return this.gone;
  }

  /** Ends the socket at once (shutdown timeout). */
  destroy(): void {
    this.socket.destroy();
  }

  private onFrame(body: Buffer): void {
    const start = performance.now();
    let id: RequestId = null;
    try {
      const request = parseRequest(body);
      id = request.id;
      this.dispatch(request.op, request.id, request.args, start);
    } catch (e) {
      const error = e instanceof RequestError ? e.error : e;
      this.send(errorResponseFor(e instanceof RequestError ? e.id : id, error));
      // Not the op the client named: an unknown op would make the label set unbounded.
      this.observe('invalid', error, start);
    }
  }

  /** Counts an answered request in the metrics, if the daemon keeps them. */
  private observe(op: string, outcome: unknown, start: number): void {
    const code = outcome === null ? 'ok' : outcome instanceof IommuError ? outcome.code : 'EIO';
    this.daemon.metrics?.observe(op, code, (performance.now() - start) / 1000);
  }

  private dispatch<O extends OpName>(op: O, id: RequestId, args: ArgsOf<O>, start: number): void {
    const handler = HANDLERS[op] as Handler<O>;
    const order = handler.order(this.session, args);
    const build = OPS[op].result.build as (answer: unknown) => unknown;
    this.sequencer.submit({
      order,
      run: () => handler.run(this.session, args),
      done: (ok, value) => {
        this.observe(op, ok ? null : value, start);
        try {
          if (ok) this.send(okResponse(id, build(value)));
          else {
            if (!(value instanceof IommuError)) this.log.error({ err: value, op }, 'internal error');
            this.send(errorResponseFor(id, value, faultDetails(value)));
          }
        } catch (e) {
          this.log.error({ err: e, op }, 'could not build the response');
          this.send(errorResponseFor(id, e));
        }
        if (this.paused) this.updateFlow();
        if (this.stopReading) this.endWhenAnswered();
      },
    });
  }

  private onOversize(length: number): void {
    this.log.warn({ length, max: this.daemon.maxFrame }, 'frame too large; closing the connection');
    this.send(errorResponse(null, 'EMSGSIZE', `frame of ${length} bytes exceeds the maximum of ${this.daemon.maxFrame}`));
    this.stopReading = true;
    this.updateFlow();
    this.endWhenAnswered();
  }

  private send(response: Response): void {
    if (this.closed || this.socket.destroyed || this.socket.writableEnded) return;
    let frame: Buffer;
    try {
      frame = encodeFrame(response);
    } catch (e) {
      this.log.error({ err: e }, 'could not encode a response');
      frame = encodeFrame(errorResponse(response.id, 'EIO', 'the response could not be encoded'));
    }
    // Answers produced in one turn of the event loop leave in one write (one syscall), not one each.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    if (!this.socket.write(frame)) {
      this.writeBlocked = true;
      this.updateFlow();
    }
  }

  private updateFlow(): void {
    if (this.ending) return; // everything read is answered; the rest of the stream is being discarded
    const pause = this.stopReading || this.writeBlocked || this.sequencer.outstanding >= this.daemon.maxInflight;
    if (pause === this.paused) return;
    this.paused = pause;
    if (pause) this.socket.pause();
    else this.socket.resume();
  }

  /** Once every request read has been answered, ends our side; the peer gets LINGER_MS to end its own. */
  private endWhenAnswered(): void {
    if (this.ending || this.sequencer.outstanding > 0) return;
    this.ending = true;
    if (this.closed) return;
    this.socket.end(() => {
      const timer = setTimeout(() => this.socket.destroy(), LINGER_MS);
      timer.unref();
      this.socket.once('close', () => clearTimeout(timer));
    });
    // The peer's remaining bytes are not read; a paused socket would never see its end of stream.
    this.socket.resume();
    this.socket.removeAllListeners('data');
    this.socket.on('data', () => undefined);
  }
}

/** A translate fault's data for the error map: reason, device, iova, access. */
function faultDetails(e: unknown): Record<string, unknown> | undefined {
  if (!(e instanceof FaultError)) return undefined;
  const f = e.fault;
  return { reason: f.reason, device: f.deviceId, iova: f.iova, access: f.access };
}

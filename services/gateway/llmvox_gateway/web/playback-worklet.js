// Playback jitter buffer on the audio thread. The page posts decoded float32 chunks of the
// server's 24 kHz audio; this processor plays them back to back, so parts and sentences join
// without gaps even though they arrive in bursts.
//
// States: `idle` (nothing to play) → `preroll` (collecting a small cushion before starting) →
// `playing`. Running dry while playing, before the page said the response has ended, is an
// underrun: it is counted and playback goes back to `preroll`. Running dry after `end` is the
// normal end of a response. `flush` (barge-in, stop button) drops everything at once.
//
// Every chunk carries a tag (the response id) so that played samples and underruns can be
// reported per response; reports go to the page through the port about every 20 ms.

const DEFAULT_SOURCE_RATE = 24000;
const DEFAULT_PREROLL_MS = 120;
const REPORT_EVERY_QUANTA = 4;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options?.processorOptions ?? {};
    const sourceRate = opts.sourceRate ?? DEFAULT_SOURCE_RATE;
    this.prerollSamples = Math.round((sourceRate * (opts.prerollMs ?? DEFAULT_PREROLL_MS)) / 1000);
    // Source samples consumed per output sample: 1 when the context runs at the source rate (the
    // page asks for that); otherwise linear interpolation bridges the two rates.
    this.ratio = sourceRate / sampleRate;
    this.queue = []; // [{samples: Float32Array, tag}]
    this.readIndex = 0; // next sample of queue[0]
    this.buffered = 0; // source samples queued, not yet played
    this.state = 'idle';
    this.ended = false;
    // Interpolation state: the output lies `frac` of the way from `prev` to `next`.
    this.prev = 0;
    this.next = 0;
    this.frac = 1; // ≥ 1: `next` must be fetched before the first output sample
    this.samplesPlayed = 0;
    this.underruns = 0;
    this.playedByTag = {};
    this.underrunsByTag = {};
    this.lastTag = null;
    this.quanta = 0;
    this.dirty = false;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    switch (message?.type) {
      case 'audio':
        if (message.samples.length > 0) {
          this.queue.push({ samples: message.samples, tag: message.tag ?? null });
          this.buffered += message.samples.length;
          this.ended = false;
          if (this.state === 'idle') {
            this.setState('preroll');
          }
        }
        break;
      case 'end': {
        // Only the response whose audio is last in the queue can end it: a late `end` of an
        // earlier response must not hide the underruns of the one that follows it.
        const lastQueued = this.queue.at(-1)?.tag ?? this.lastTag;
        if (message.tag === undefined || message.tag === lastQueued) {
          this.ended = true;
        }
        break;
      }
      case 'flush':
        this.queue = [];
        this.readIndex = 0;
        this.buffered = 0;
        this.ended = false;
        this.prev = this.next = 0;
        this.frac = 1;
        this.setState('idle');
        break;
      default:
        break;
    }
    this.dirty = true;
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.report(); // transitions are reported at once, not on the next tick
    }
  }

  // One source sample from the queue, or null when it is empty.
  take() {
    while (this.queue.length > 0) {
      const head = this.queue[0];
      if (this.readIndex < head.samples.length) {
        const value = head.samples[this.readIndex++];
        this.buffered -= 1;
        this.samplesPlayed += 1;
        this.lastTag = head.tag;
        this.playedByTag[head.tag] = (this.playedByTag[head.tag] ?? 0) + 1;
        return value;
      }
      this.queue.shift();
      this.readIndex = 0;
    }
    return null;
  }

  // Fills `out` from the queue; returns the index where the source ran dry (out.length if not).
  render(out) {
    for (let i = 0; i < out.length; i++) {
      while (this.frac >= 1) {
        const value = this.take();
        if (value === null) {
          return i;
        }
        this.prev = this.next;
        this.next = value;
        this.frac -= 1;
      }
      out[i] = this.ratio === 1 ? this.next : this.prev + (this.next - this.prev) * this.frac;
      this.frac += this.ratio;
    }
    return out.length;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (this.state === 'preroll' && (this.buffered >= this.prerollSamples || this.ended)) {
      this.setState('playing');
    }
    if (this.state === 'playing') {
      const written = this.render(out);
      if (written < out.length) {
        out.fill(0, written);
        if (this.ended) {
          this.setState('idle');
        } else {
          this.underruns += 1;
          this.underrunsByTag[this.lastTag] = (this.underrunsByTag[this.lastTag] ?? 0) + 1;
          this.setState('preroll');
        }
      }
      this.dirty = true;
    }
    // Copies the mono signal to any further channel the destination asked for.
    for (let c = 1; c < outputs[0].length; c++) {
      outputs[0][c].set(out);
    }
    if (++this.quanta % REPORT_EVERY_QUANTA === 0 && this.dirty) {
      this.report();
    }
    return true;
  }

  // Totals plus the per-tag increments since the previous report.
  report() {
    this.port.postMessage({
      type: 'stats',
      state: this.state,
      samplesPlayed: this.samplesPlayed,
      underruns: this.underruns,
      buffered: this.buffered,
      playedByTag: this.playedByTag,
      underrunsByTag: this.underrunsByTag,
    });
    this.playedByTag = {};
    this.underrunsByTag = {};
    this.dirty = false;
  }
}

registerProcessor('llmvox-playback', PlaybackProcessor);

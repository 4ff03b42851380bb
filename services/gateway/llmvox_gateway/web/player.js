// Main-thread side of playback: one AudioContext at the server's output rate and the jitter
// buffer worklet (playback-worklet.js) connected to the speakers.

export const OUTPUT_SAMPLE_RATE = 24000;

export class Player {
  /** @param {{prerollMs?: number, onStats: (stats: object) => void}} options */
  constructor({ prerollMs = 120, onStats }) {
    this.prerollMs = prerollMs;
    this.onStats = onStats;
    this.context = null;
    this.node = null;
  }

  async init() {
    try {
      // At 24 kHz the browser resamples to the device itself and the worklet only copies.
      this.context = new AudioContext({ sampleRate: OUTPUT_SAMPLE_RATE, latencyHint: 'interactive' });
    } catch {
      this.context = new AudioContext({ latencyHint: 'interactive' }); // the worklet interpolates
    }
    await this.context.audioWorklet.addModule(new URL('./playback-worklet.js', import.meta.url));
    this.node = new AudioWorkletNode(this.context, 'llmvox-playback', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { sourceRate: OUTPUT_SAMPLE_RATE, prerollMs: this.prerollMs },
    });
    this.node.port.onmessage = (event) => this.onStats(event.data);
    this.node.connect(this.context.destination);
  }

  /** Browsers start audio only after a user gesture: called from every click handler. */
  resume() {
    if (this.context && this.context.state !== 'running') {
      this.context.resume().catch(() => {});
    }
  }

  get running() {
    return this.context?.state === 'running';
  }

  /** @param {Float32Array} samples (transferred: unusable afterwards) @param {string} tag */
  enqueue(samples, tag) {
    this.node?.port.postMessage({ type: 'audio', samples, tag }, [samples.buffer]);
  }

  /** No more audio will come for `tag`: play the rest out without waiting for the pre-roll. */
  end(tag) {
    this.node?.port.postMessage({ type: 'end', tag });
  }

  /** Drops everything queued (stop button, barge-in). */
  flush() {
    this.node?.port.postMessage({ type: 'flush' });
  }
}

/** Decodes one binary audio frame of the WebSocket into float32 samples. */
export function decodeAudioFrame(buffer, format) {
  if (format === 'float32') {
    return new Float32Array(buffer, 0, Math.floor(buffer.byteLength / 4));
  }
  // PCM16 little-endian; DataView keeps it right on a big-endian machine too.
  const view = new DataView(buffer);
  const samples = new Float32Array(Math.floor(buffer.byteLength / 2));
  for (let i = 0; i < samples.length; i++) {
    samples[i] = view.getInt16(2 * i, true) / 32768;
  }
  return samples;
}

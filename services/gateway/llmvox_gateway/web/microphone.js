// Microphone capture: getUserMedia → capture-worklet.js (16 kHz PCM16 chunks) → onChunk.
// A fresh AudioContext per recording, at the device's own rate (the worklet resamples), so no
// browser is asked to connect a media stream to a context of a different rate.

export const INPUT_SAMPLE_RATE = 16000;
const FLUSH_TIMEOUT_MS = 1000;

export class Microphone {
  /**
   * @param {{onChunk: (pcm: ArrayBuffer, peak: number) => void, targetRate?: number}} options
   * `targetRate`: the PCM16 rate of the chunks (16 kHz for /v1/ws, 24 kHz for /v1/realtime).
   */
  constructor({ onChunk, targetRate = INPUT_SAMPLE_RATE }) {
    this.onChunk = onChunk;
    this.targetRate = targetRate;
    this.stream = null;
    this.context = null;
    this.node = null;
    this.flushed = null; // resolves when the worklet has posted its last chunk
  }

  get active() {
    return this.stream !== null;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      this.context = new AudioContext({ latencyHint: 'interactive' });
      await this.context.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
      // One (silent) output connected to the destination: that keeps the node pulled by the
      // rendering graph in every browser.
      this.node = new AudioWorkletNode(this.context, 'llmvox-capture', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        channelCount: 1,
        channelCountMode: 'explicit',
        processorOptions: { targetRate: this.targetRate },
      });
      this.node.port.onmessage = (event) => this.onMessage(event.data);
      this.context.createMediaStreamSource(this.stream).connect(this.node);
      this.node.connect(this.context.destination);
      await this.context.resume();
    } catch (error) {
      await this.release();
      throw error;
    }
  }

  onMessage(message) {
    if (message?.type !== 'chunk') {
      return;
    }
    if (message.pcm.byteLength > 0) {
      this.onChunk(message.pcm, message.peak);
    }
    if (message.final) {
      this.flushed?.();
    }
  }

  /** Stops capture after the worklet has handed over the audio it still holds. */
  async stop() {
    if (!this.node) {
      await this.release();
      return;
    }
    await new Promise((resolve) => {
      this.flushed = resolve;
      this.node.port.postMessage({ type: 'flush' });
      setTimeout(resolve, FLUSH_TIMEOUT_MS); // a closed or stalled context never answers
    });
    this.flushed = null;
    await this.release();
  }

  async release() {
    this.stream?.getTracks().forEach((track) => track.stop());
    this.stream = null;
    this.node?.disconnect();
    this.node = null;
    const context = this.context;
    this.context = null;
    await context?.close().catch(() => {});
  }
}

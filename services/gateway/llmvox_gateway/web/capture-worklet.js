// Microphone capture on the audio thread: mono input at the context's rate → 16 kHz PCM16 chunks,
// posted to the page (which sends each one as a binary WebSocket frame).
//
// Resampling averages the input samples that fall into each output sample's time window (a box
// filter). That is a crude anti-aliasing low-pass, but speech carries little energy above 8 kHz
// and it handles any input rate (44.1 kHz gives windows of 2 or 3 samples) without a filter design.

const DEFAULT_TARGET_RATE = 16000;
const DEFAULT_CHUNK_MS = 40;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options?.processorOptions ?? {};
    this.targetRate = opts.targetRate ?? DEFAULT_TARGET_RATE;
    // Input samples per output sample; `sampleRate` is the AudioWorkletGlobalScope's.
    this.step = sampleRate / this.targetRate;
    this.untilNext = this.step; // input samples left in the current output window
    this.sum = 0;
    this.count = 0;
    this.last = 0;
    this.chunkSamples = Math.round((this.targetRate * (opts.chunkMs ?? DEFAULT_CHUNK_MS)) / 1000);
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.peak = 0;
    this.port.onmessage = (event) => {
      if (event.data?.type === 'flush') {
        this.post(true);
      }
    };
  }

  emit(value) {
    this.last = value;
    const clipped = Math.max(-1, Math.min(1, value));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    this.peak = Math.max(this.peak, Math.abs(clipped));
    if (this.filled === this.chunkSamples) {
      this.post(false);
    }
  }

  // Hands the filled part of the chunk to the page (the buffer is transferred, not copied).
  post(final) {
    const pcm = this.chunk.slice(0, this.filled);
    this.port.postMessage({ type: 'chunk', pcm: pcm.buffer, peak: this.peak, final }, [pcm.buffer]);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel) {
      return true; // no source connected (yet): keep the processor alive
    }
    for (let i = 0; i < channel.length; i++) {
      this.sum += channel[i];
      this.count += 1;
      this.untilNext -= 1;
      // More than one output per input only when the mic rate is below the target (upsampling):
      // those repeat the window's mean.
      while (this.untilNext <= 0) {
        this.emit(this.count > 0 ? this.sum / this.count : this.last);
        this.sum = 0;
        this.count = 0;
        this.untilNext += this.step;
      }
    }
    return true;
  }
}

registerProcessor('llmvox-capture', CaptureProcessor);

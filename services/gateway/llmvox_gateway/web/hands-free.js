// Hands-free mode: the microphone stays open and the server finds the turns. It speaks the
// OpenAI Realtime protocol at /v1/realtime with server_vad (docs/gateway.md): the server's VAD
// says when speech starts and stops, commits each utterance and answers it; speech that starts
// during an answer interrupts it (the server cancels a running response, this page cuts what is
// still playing and tells the server how much was heard with conversation.item.truncate).
//
// Its own WebSocket, next to the page's /v1/ws connection; it shares the page's player and state:
// its answers are turns of `window.llmvox.turns` (kind 'hands-free'), and `window.llmvox.handsFree`
// holds what browser tests wait on.

import { Microphone } from './microphone.js';

const REALTIME_RATE = 24000; // the protocol's PCM16 rate, both ways
const ACTIVE = new Set(['pending', 'in_progress']);

export function realtimeUrl(location = window.location) {
  const url = new URL('/v1/realtime', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('model', 'llmvox');
  const apiKey = new URLSearchParams(location.search).get('api_key');
  if (apiKey) {
    url.searchParams.set('api_key', apiKey);
  }
  return url.toString();
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = '';
  // In slices: String.fromCharCode with one argument per byte overflows the stack on big chunks.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function pcm16FromBase64(text) {
  const binary = atob(text);
  const samples = new Float32Array(binary.length >> 1);
  for (let i = 0; i < samples.length; i++) {
    const value = binary.charCodeAt(2 * i) | (binary.charCodeAt(2 * i + 1) << 8);
    samples[i] = (value >= 0x8000 ? value - 0x10000 : value) / 32768;
  }
  return samples;
}

export class HandsFree {
  /**
   * @param {{state: object, player: import('./player.js').Player, newTurn: Function,
   *          addError: Function, onChange: Function, document: Document}} options
   */
  constructor({ state, player, newTurn, addError, onChange, document }) {
    this.state = state;
    this.player = player;
    this.newTurn = newTurn;
    this.addError = addError;
    this.onChange = onChange;
    this.button = document.getElementById('hands-free');
    this.status = document.getElementById('hands-free-status');
    this.micButton = document.getElementById('mic');
    this.socket = null;
    this.busy = false; // start/stop in progress: further clicks wait for it
    this.turns = new Map(); // response id → turn
    this.speechStoppedAt = null; // a response's latency counts from the end of the speech
    this.microphone = new Microphone({
      targetRate: REALTIME_RATE,
      onChunk: (pcm, peak) => this.onChunk(pcm, peak),
    });
    state.handsFree = {
      active: false,
      connected: false,
      speaking: false,
      speechStarts: 0,
      utterances: 0, // committed by the server's VAD
      interruptions: 0, // speech that began while an answer ran or played
      sentSeconds: 0,
    };
    this.button?.addEventListener('click', () => {
      this.player.resume();
      this.toggle();
    });
    this.render();
  }

  get active() {
    return this.state.handsFree.active;
  }

  async toggle() {
    if (this.busy) {
      return;
    }
    this.busy = true;
    try {
      await (this.active ? this.stop() : this.start());
    } finally {
      this.busy = false;
      this.changed();
    }
  }

  async start() {
    const hf = this.state.handsFree;
    hf.active = true;
    this.changed();
    const socket = new WebSocket(realtimeUrl());
    this.socket = socket;
    socket.onmessage = (message) => this.onEvent(JSON.parse(message.data));
    const opened = new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onclose = (event) => reject(new Error(`closed (${event.code}) ${event.reason}`));
    });
    try {
      await opened;
    } catch (error) {
      this.addError('hands-free', null, `no realtime connection: ${error.message}`);
      await this.stop();
      return;
    }
    socket.onclose = (event) => this.onClosed(socket, event);
    hf.connected = true;
    this.send({
      type: 'session.update',
      session: {
        type: 'realtime',
        audio: {
          input: {
            format: { type: 'audio/pcm', rate: REALTIME_RATE },
            turn_detection: { type: 'server_vad', create_response: true, interrupt_response: true },
          },
          output: { format: { type: 'audio/pcm', rate: REALTIME_RATE } },
        },
      },
    });
    try {
      await this.microphone.start();
    } catch (error) {
      this.addError('microphone', error.name ?? null, error.message ?? String(error));
      await this.stop();
    }
  }

  async stop() {
    const hf = this.state.handsFree;
    await this.microphone.stop();
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
    hf.active = false;
    hf.connected = false;
    hf.speaking = false;
    this.state.micPeak = 0;
    // The server forgets its responses with the socket: what arrived still plays out.
    for (const turn of this.turns.values()) {
      if (ACTIVE.has(turn.status)) {
        turn.status = 'cancelled';
        this.player.end(turn.responseId);
      }
    }
    this.changed();
  }

  /** The stop button: cancel a running answer (what plays is cut by the page). */
  cancel() {
    if ([...this.turns.values()].some((turn) => ACTIVE.has(turn.status))) {
      this.send({ type: 'response.cancel' });
    }
  }

  send(event) {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(event));
      return true;
    }
    return false;
  }

  onChunk(pcm, peak) {
    if (this.send({ type: 'input_audio_buffer.append', audio: toBase64(pcm) })) {
      this.state.handsFree.sentSeconds += pcm.byteLength / 2 / REALTIME_RATE;
    }
    this.state.micPeak = peak;
    this.changed();
  }

  onClosed(socket, event) {
    if (this.socket !== socket) {
      return; // closed by stop()
    }
    this.addError('hands-free', event.code, event.reason || 'realtime connection closed');
    this.stop();
  }

  onEvent(event) {
    const state = this.state;
    const hf = state.handsFree;
    switch (event.type) {
      case 'input_audio_buffer.speech_started':
        hf.speechStarts += 1;
        hf.speaking = true;
        state.transcript = '';
        state.transcriptFinal = false;
        this.interrupt();
        break;
      case 'input_audio_buffer.speech_stopped':
        hf.speaking = false;
        this.speechStoppedAt = performance.now();
        break;
      case 'input_audio_buffer.committed':
        hf.utterances += 1;
        break;
      case 'conversation.item.input_audio_transcription.delta':
        state.transcript += event.delta ?? '';
        break;
      case 'conversation.item.input_audio_transcription.completed': {
        state.transcript = event.transcript ?? '';
        state.transcriptFinal = true;
        state.transcripts.push(state.transcript);
        const waiting = [...this.turns.values()].find((turn) => turn.input === '');
        if (waiting) {
          waiting.input = state.transcript;
        }
        break;
      }
      case 'response.created': {
        const turn = this.newTurn('hands-free', '');
        turn.responseId = event.response?.id;
        turn.source = 'llm';
        turn.status = 'in_progress';
        turn.startedAt = this.speechStoppedAt ?? performance.now();
        this.speechStoppedAt = null;
        state.turns.push(turn);
        this.turns.set(turn.responseId, turn);
        state.answer = '';
        break;
      }
      case 'response.output_item.added': {
        const turn = this.turns.get(event.response_id);
        if (turn) {
          turn.itemId = event.item?.id ?? null;
        }
        break;
      }
      case 'response.output_audio_transcript.delta': {
        const turn = this.turns.get(event.response_id);
        if (turn) {
          turn.text += event.delta ?? '';
          state.answer = turn.text;
        }
        break;
      }
      case 'response.output_audio.delta':
        this.onAudio(event);
        break;
      case 'response.done': {
        const response = event.response ?? {};
        const turn = this.turns.get(response.id);
        if (turn) {
          turn.status = response.status ?? 'completed';
          turn.error = response.status_details?.error ?? null;
          if (!turn.cancelRequested) {
            this.player.end(turn.responseId);
          }
        }
        break;
      }
      case 'llmvox.timings': {
        const turn = this.turns.get(event.response_id);
        if (turn) {
          turn.timings = event.timings ?? null;
        }
        break;
      }
      case 'error':
        this.addError(event.error?.type ?? 'error', event.error?.code ?? null, event.error?.message ?? '');
        break;
      default:
        break;
    }
    this.changed();
  }

  onAudio(event) {
    const turn = this.turns.get(event.response_id);
    const samples = pcm16FromBase64(event.delta ?? '');
    this.state.audioFramesReceived += 1;
    this.state.samplesReceived += samples.length;
    if (!turn || turn.cancelRequested) {
      this.state.audioFramesDropped += 1;
      return;
    }
    turn.framesReceived += 1;
    turn.samplesReceived += samples.length;
    if (turn.firstAudioMs === null) {
      turn.firstAudioMs = performance.now() - turn.startedAt;
    }
    this.player.enqueue(samples, turn.responseId);
  }

  /** The user speaks: an answer still running or playing is cut here at once (the server
   * cancels a running one itself: interrupt_response). */
  interrupt() {
    let interrupted = false;
    for (const turn of this.turns.values()) {
      const playing = turn.samplesPlayed < turn.samplesReceived;
      if (turn.stopped || (!ACTIVE.has(turn.status) && !playing)) {
        continue; // already cut, or over and played out
      }
      interrupted = true;
      turn.cancelRequested = true;
      turn.stopped = true;
      if (turn.itemId && turn.samplesReceived > 0) {
        // What the user heard of the answer, so the next answer does not assume the rest.
        this.send({
          type: 'conversation.item.truncate',
          item_id: turn.itemId,
          content_index: 0,
          audio_end_ms: Math.floor((turn.samplesPlayed * 1000) / REALTIME_RATE),
        });
      }
    }
    if (interrupted) {
      this.state.handsFree.interruptions += 1;
      this.player.flush();
    }
  }

  changed() {
    this.render();
    this.onChange();
  }

  render() {
    const hf = this.state.handsFree;
    if (this.button) {
      this.button.setAttribute('aria-pressed', String(hf.active));
      this.button.classList.toggle('recording', hf.active);
      this.button.textContent = hf.active ? 'Hands-free: on' : 'Hands-free';
    }
    if (this.micButton) {
      this.micButton.disabled = hf.active; // one microphone user at a time
    }
    if (this.status) {
      this.status.textContent = !hf.active
        ? ''
        : !hf.connected
          ? 'connecting…'
          : hf.speaking
            ? 'listening: speech'
            : 'listening';
    }
  }
}

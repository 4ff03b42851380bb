// Draws the page from the state object of app.js (`window.llmvox`); reads nothing else.

import { OUTPUT_SAMPLE_RATE } from './player.js';

const MAX_TURNS_SHOWN = 20;

const CONNECTION_TEXT = {
  connecting: (_code, retry) => (retry?.attempt ? `reconnecting… (attempt ${retry.attempt})` : 'connecting…'),
  open: () => 'connected',
  closed: (code, retry) =>
    `disconnected${code ? ` (${code})` : ''} — ` +
    (retry?.retryInMs !== undefined
      ? `reconnecting in ${(retry.retryInMs / 1000).toFixed(1)} s (attempt ${retry.attempt})`
      : 'retrying'),
  refused: () => 'refused (API key?) — reload with ?api_key=…',
};

/** Seconds with two decimals, or a dash for a value the server did not report. */
const seconds = (value, digits = 2) =>
  typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '—';

export class View {
  constructor(document) {
    this.document = document;
    const $ = (id) => document.getElementById(id);
    this.elements = {
      connection: $('connection'),
      sessionId: $('session-id'),
      untrained: $('untrained'),
      mic: $('mic'),
      micLabel: $('mic-label'),
      micLevel: $('mic-level'),
      micStatus: $('mic-status'),
      stop: $('stop'),
      form: $('text-form'),
      text: $('text'),
      verbatim: $('verbatim'),
      transcript: $('transcript'),
      answer: $('answer'),
      turns: document.querySelector('#turns tbody'),
      latestLatency: $('latest-latency'),
      frames: $('frames'),
      received: $('received'),
      played: $('played'),
      buffered: $('buffered'),
      underruns: $('underruns'),
      playerState: $('player-state'),
      errors: $('errors'),
    };
  }

  render(state, { playerRunning }) {
    const ui = this.elements;
    ui.connection.textContent = CONNECTION_TEXT[state.connection](state.closeCode, state.retry);
    ui.connection.dataset.state = state.connection;
    ui.sessionId.textContent = state.session?.id ? `session ${state.session.id}` : '';
    ui.untrained.hidden = !state.ttsUntrained;

    ui.micLabel.textContent = state.capturing ? 'Stop talking & send' : 'Start talking';
    ui.mic.setAttribute('aria-pressed', String(state.capturing));
    ui.mic.classList.toggle('recording', state.capturing);
    ui.micLevel.style.width = `${Math.round(Math.min(1, state.micPeak) * 100)}%`;
    ui.micStatus.textContent = state.capturing
      ? `recording ${seconds(state.capturedSeconds, 1)} s`
      : 'microphone off';

    ui.transcript.textContent = state.transcript;
    ui.transcript.classList.toggle('partial', !state.transcriptFinal);
    ui.answer.textContent = state.answer;

    this.renderTurns(state.turns);
    const latest = state.turns.findLast((turn) => turn.firstAudioMs !== null);
    ui.latestLatency.textContent = latest
      ? `latest first audio: ${seconds(latest.firstAudioMs / 1000)} s`
      : '';

    ui.frames.textContent = String(state.audioFramesReceived);
    ui.received.textContent = seconds(state.samplesReceived / OUTPUT_SAMPLE_RATE);
    ui.played.textContent = seconds(state.samplesPlayed / OUTPUT_SAMPLE_RATE);
    ui.buffered.textContent = seconds(state.samplesBuffered / OUTPUT_SAMPLE_RATE);
    ui.underruns.textContent = String(state.underruns);
    ui.playerState.textContent = playerRunning
      ? state.playbackState
      : 'suspended (click to start audio)';

    ui.errors.replaceChildren(
      ...state.errors.map((error) => {
        const item = this.document.createElement('li');
        item.textContent = `${error.type}${error.code ? ` [${error.code}]` : ''}: ${error.message}`;
        return item;
      }),
    );
  }

  /** The latency table, newest turn first. */
  renderTurns(turns) {
    const rows = turns
      .slice(-MAX_TURNS_SHOWN)
      .reverse()
      .map((turn) => {
        const timings = turn.timings ?? {};
        const cells = [
          String(turn.index),
          `${turn.kind} · ${turn.input}`,
          turn.stopped && turn.status !== 'cancelled' ? `${turn.status} (stopped)` : turn.status,
          seconds(turn.firstAudioMs === null ? null : turn.firstAudioMs / 1000),
          seconds(timings.first_audio_s),
          seconds(timings.asr_s),
          seconds(timings.llm_first_token_s),
          seconds(timings.first_sentence_s),
          seconds(timings.total_s),
          seconds(turn.samplesPlayed / OUTPUT_SAMPLE_RATE),
          String(turn.underruns),
        ];
        const row = this.document.createElement('tr');
        row.dataset.status = turn.status;
        row.title = turn.error?.message ?? '';
        for (const text of cells) {
          const cell = this.document.createElement('td');
          cell.textContent = text;
          row.append(cell);
        }
        row.children[1].classList.add('input');
        return row;
      });
    this.elements.turns.replaceChildren(...rows);
  }
}

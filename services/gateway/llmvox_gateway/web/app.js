// The LLMVoX web page: microphone and text in, live transcript and answer out, gap-free audio
// playback and a latency readout, all over the gateway's WebSocket (docs/gateway.md).
//
// Everything the page knows lives in one plain object, `window.llmvox`, updated as events arrive
// (browser tests read it); view.js redraws the DOM from it, coalesced to one redraw per tick.

import { GatewayConnection, gatewayUrl } from './connection.js';
import { HandsFree } from './hands-free.js';
import { INPUT_SAMPLE_RATE, Microphone } from './microphone.js';
import { decodeAudioFrame, Player } from './player.js';
import { View } from './view.js';

const MAX_ERRORS_KEPT = 50;

const state = {
  ready: false, // the playback worklet is loaded
  connection: 'connecting', // connecting | open | closed (retrying) | refused (bad API key)
  connected: false,
  closeCode: null,
  retry: null, // {code?, reason?, retryInMs?, attempt}: the last connection change, for the status line
  session: null, // the server's session object (session.created / session.updated)
  ttsUntrained: false,
  capturing: false,
  capturedSeconds: 0, // audio sent for the current (or last) recording
  micPeak: 0,
  transcript: '', // the latest utterance: partial while it is spoken, then final
  transcriptFinal: false,
  transcripts: [], // every final transcript of the session
  answer: '', // text of the latest response, as it streams
  turns: [], // see newTurn()
  audioFramesReceived: 0,
  audioFramesDropped: 0, // frames of cancelled responses, never played
  samplesReceived: 0,
  samplesPlayed: 0,
  samplesBuffered: 0,
  underruns: 0,
  playbackState: 'idle', // idle | preroll | playing (the worklet's state)
  errors: [], // [{type, code, message, at}]
};
window.llmvox = state;

// ---------------------------------------------------------------------------------------------
// Turns: one per commit / text message / verbatim text, matched to the server's response

const ACTIVE = new Set(['pending', 'in_progress']);

function newTurn(kind, input) {
  return {
    index: state.turns.length + 1,
    kind, // voice | text | verbatim | server
    input,
    responseId: null,
    source: null, // llm | verbatim (response.created)
    status: 'pending', // pending | in_progress | completed | cancelled | failed
    startedAt: performance.now(),
    firstAudioMs: null, // page-measured: commit/send → first audio frame received
    timings: null, // the server's response.done timings (seconds)
    text: '',
    inputAudioSeconds: null,
    audioSeconds: null,
    framesReceived: 0,
    samplesReceived: 0,
    samplesPlayed: 0,
    underruns: 0,
    cancelRequested: false, // its audio is dropped from now on
    stopped: false, // its playback was cut short (stop button, barge-in)
    error: null,
  };
}

const turnById = (id) => state.turns.find((turn) => turn.responseId === id) ?? null;
const latestTurn = () => state.turns.at(-1) ?? null;
const activeTurns = () => state.turns.filter((turn) => ACTIVE.has(turn.status));

// Cuts playback short (stop button, barge-in): what is queued is dropped at once, and audio still
// arriving for a running response is ignored while the server cancels it. The gateway sends audio
// as fast as it is made, so a response may be over on the server while its audio still plays
// here: such a turn is marked `stopped` too.
function cutPlayback() {
  for (const turn of state.turns) {
    if (ACTIVE.has(turn.status)) {
      turn.cancelRequested = true;
      turn.stopped = true;
    } else if (turn.samplesPlayed < turn.samplesReceived) {
      turn.stopped = true;
    }
  }
  player.flush();
}

function startTurn(kind, input) {
  cutPlayback();
  const turn = newTurn(kind, input);
  state.turns.push(turn);
  state.answer = '';
  return turn;
}

// ---------------------------------------------------------------------------------------------
// Server events

function onServerEvent(event) {
  switch (event.type) {
    case 'session.created':
      state.session = event.session ?? null;
      state.ttsUntrained = event.session?.tts_untrained === true;
      // The defaults already, but said explicitly: this page captures 16 kHz PCM16 and plays PCM16.
      connection.send({
        type: 'session.update',
        session: { input_sample_rate: INPUT_SAMPLE_RATE, output_audio_format: 'pcm16' },
      });
      break;
    case 'session.updated':
      state.session = { ...state.session, ...event.session };
      if (event.session && 'tts_untrained' in event.session) {
        state.ttsUntrained = event.session.tts_untrained === true;
      }
      break;
    case 'input_audio_buffer.committed': {
      const turn = [...state.turns].reverse().find((t) => t.kind === 'voice');
      if (turn) {
        turn.inputAudioSeconds = event.audio_seconds ?? null;
      }
      break;
    }
    case 'transcript.partial':
      state.transcript = event.text ?? '';
      state.transcriptFinal = false;
      break;
    case 'transcript.final': {
      state.transcript = event.text ?? '';
      state.transcriptFinal = true;
      state.transcripts.push(state.transcript);
      const turn = latestTurn();
      if (turn?.kind === 'voice' && !turn.input) {
        turn.input = state.transcript;
      }
      break;
    }
    case 'response.created': {
      const id = event.response?.id;
      let turn = state.turns.find((t) => t.responseId === null && t.status === 'pending');
      if (!turn) {
        turn = newTurn('server', '');
        state.turns.push(turn);
      }
      turn.responseId = id;
      turn.source = event.response?.source ?? null;
      turn.status = 'in_progress';
      state.answer = '';
      break;
    }
    case 'response.text.delta': {
      const turn = turnById(event.response_id);
      if (turn) {
        turn.text += event.delta ?? '';
        if (turn === latestTurn()) {
          state.answer = turn.text;
        }
      }
      break;
    }
    case 'response.text.done': {
      const turn = turnById(event.response_id);
      if (turn && typeof event.text === 'string') {
        turn.text = event.text;
        if (turn === latestTurn()) {
          state.answer = turn.text;
        }
      }
      break;
    }
    case 'response.done':
      onResponseDone(event.response ?? {});
      break;
    case 'error':
      onError(event.error ?? {});
      break;
    default:
      break; // response.audio.delta is paired with its frame by the connection
  }
}

function onResponseDone(response) {
  const turn = turnById(response.id);
  if (!turn) {
    return;
  }
  turn.status = response.status ?? 'completed';
  turn.timings = response.timings ?? null;
  turn.audioSeconds = response.audio_seconds ?? null;
  turn.error = response.error ?? null;
  if (typeof response.text === 'string' && response.text) {
    turn.text = response.text;
  }
  if (turn === latestTurn()) {
    state.answer = turn.text;
  }
  if (!turn.cancelRequested) {
    player.end(turn.responseId);
  }
}

function onError(error) {
  addError(error.type ?? 'error', error.code ?? null, error.message ?? '');
  // An input that never became a response (empty audio, text too long…) ends here.
  const turn = latestTurn();
  if (turn && turn.status === 'pending') {
    turn.status = 'failed';
    turn.error = error;
  }
}

function addError(type, code, message) {
  state.errors.push({ type, code, message, at: new Date().toISOString() });
  state.errors.splice(0, Math.max(0, state.errors.length - MAX_ERRORS_KEPT));
  scheduleRender();
}

function onAudioFrame(frame, delta) {
  state.audioFramesReceived += 1;
  const format = delta?.format ?? state.session?.output_audio_format ?? 'pcm16';
  const samples = decodeAudioFrame(frame, format);
  state.samplesReceived += samples.length;
  const turn = delta ? turnById(delta.response_id) : activeTurns().at(-1);
  if (!turn || turn.cancelRequested) {
    state.audioFramesDropped += 1;
    return;
  }
  turn.framesReceived += 1;
  turn.samplesReceived += samples.length;
  if (turn.firstAudioMs === null) {
    turn.firstAudioMs = performance.now() - turn.startedAt;
  }
  player.enqueue(samples, turn.responseId);
}

function onPlayerStats(stats) {
  state.samplesPlayed = stats.samplesPlayed;
  state.underruns = stats.underruns;
  state.samplesBuffered = stats.buffered;
  state.playbackState = stats.state;
  for (const [tag, played] of Object.entries(stats.playedByTag ?? {})) {
    const turn = turnById(tag);
    if (turn) {
      turn.samplesPlayed += played;
    }
  }
  for (const [tag, count] of Object.entries(stats.underrunsByTag ?? {})) {
    const turn = turnById(tag);
    if (turn) {
      turn.underruns += count;
    }
  }
  scheduleRender();
}

function onConnectionState(connectionState, detail) {
  state.connection = connectionState;
  state.connected = connectionState === 'open';
  // Shown in the status line: when the next try is and how many came before it.
  state.retry = detail ?? null;
  if (connectionState === 'closed' || connectionState === 'refused') {
    state.closeCode = detail?.code ?? null;
    state.session = null;
    if (detail && detail.code !== 1000) {
      addError('connection', detail.code, detail.reason || 'connection closed');
    }
    // The server forgets the session with its socket: nothing running can still complete. What
    // arrived of it still plays out.
    for (const turn of activeTurns()) {
      turn.status = 'failed';
      turn.error = { type: 'connection', message: 'connection closed' };
      player.end(turn.responseId);
    }
    if (microphone.active) {
      stopCapture(false);
    }
  }
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// User actions

let micBusy = false; // start/stop in progress: ignore further clicks until it is done

async function toggleMicrophone() {
  player.resume();
  if (micBusy) {
    return;
  }
  micBusy = true;
  try {
    if (microphone.active) {
      await stopCapture(true);
    } else {
      await startCapture();
    }
  } finally {
    micBusy = false;
    scheduleRender();
  }
}

async function startCapture() {
  if (!navigator.mediaDevices?.getUserMedia) {
    addError('microphone', null, 'no microphone access here (the page needs https or localhost)');
    return;
  }
  state.capturedSeconds = 0;
  state.transcript = '';
  state.transcriptFinal = false;
  try {
    await microphone.start();
  } catch (error) {
    addError('microphone', error.name ?? null, error.message ?? String(error));
    return;
  }
  state.capturing = true;
}

/** Ends the recording; `commit`: the utterance is over, the server answers it. */
async function stopCapture(commit) {
  await microphone.stop();
  state.capturing = false;
  state.micPeak = 0;
  if (commit && connection.isOpen) {
    startTurn('voice', '');
    connection.send({ type: 'input_audio_buffer.commit' });
  }
  scheduleRender();
}

function onMicChunk(pcm, peak) {
  if (connection.sendBinary(pcm)) {
    state.capturedSeconds += pcm.byteLength / 2 / INPUT_SAMPLE_RATE;
  }
  state.micPeak = peak;
  scheduleRender();
}

function sendText(event) {
  event.preventDefault();
  player.resume();
  const text = ui.text.value.trim();
  if (!text) {
    return;
  }
  if (!connection.isOpen) {
    addError('connection', null, 'not connected: the message was not sent');
    return;
  }
  if (ui.verbatim.checked) {
    // Spoken as typed, no LLM. A running response is cancelled first: barge-in is documented
    // for commit and response.create, and the verbatim text must not queue behind an answer.
    if (activeTurns().length > 0) {
      connection.send({ type: 'response.cancel' });
    }
    startTurn('verbatim', text);
    connection.send({ type: 'llmvox.text.append', text });
    connection.send({ type: 'llmvox.text.commit' });
  } else {
    startTurn('text', text);
    connection.send({
      type: 'conversation.item.create',
      item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] },
    });
    connection.send({ type: 'response.create' });
  }
  ui.text.value = '';
  scheduleRender();
}

function stopResponse() {
  player.resume();
  const running = activeTurns().length > 0;
  cutPlayback();
  handsFree.cancel(); // its answers run on its own connection
  if (running) {
    connection.send({ type: 'response.cancel' });
  }
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// Rendering

let renderPending = false;

function scheduleRender() {
  if (!renderPending) {
    renderPending = true;
    setTimeout(() => {
      renderPending = false;
      view.render(state, { playerRunning: player.running });
    }, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Start

const view = new View(document);
const ui = view.elements;
const player = new Player({ onStats: onPlayerStats });
const microphone = new Microphone({ onChunk: onMicChunk });
// Hands-free (/v1/realtime, server-side turn detection): its own socket and microphone.
const handsFree = new HandsFree({ state, player, newTurn, addError, onChange: scheduleRender, document });
const connection = new GatewayConnection(gatewayUrl(), {
  onState: onConnectionState,
  onEvent: (event) => {
    onServerEvent(event);
    scheduleRender();
  },
  onAudio: (frame, delta) => {
    onAudioFrame(frame, delta);
    scheduleRender();
  },
});

ui.mic.addEventListener('click', toggleMicrophone);
ui.stop.addEventListener('click', stopResponse);
ui.form.addEventListener('submit', sendText);
ui.text.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    ui.form.requestSubmit();
  }
});
// Any click may be the user gesture the browser waits for before it lets audio play.
document.addEventListener('click', () => player.resume());

try {
  await player.init();
  state.ready = true;
} catch (error) {
  addError('audio', error.name ?? null, `no audio playback: ${error.message ?? error}`);
}
connection.connect();
scheduleRender();

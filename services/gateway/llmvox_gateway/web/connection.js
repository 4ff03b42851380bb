// The gateway's WebSocket (/v1/ws, docs/gateway.md): JSON events both ways, binary audio frames
// both ways. Reconnects with a growing delay after the socket closes (the gateway restarted, the
// network dropped): 0.5 s, 1 s, 2 s, ... up to 8 s, back to 0.5 s once a session starts again.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;
const WS_POLICY = 1008;

/** ws(s)://<this host>/v1/ws, passing `?api_key=` on when the page's own URL has one. */
export function gatewayUrl(location = window.location) {
  const url = new URL('/v1/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const apiKey = new URLSearchParams(location.search).get('api_key');
  if (apiKey) {
    url.searchParams.set('api_key', apiKey);
  }
  return url.toString();
}

export class GatewayConnection {
  /**
   * @param {string} url
   * @param {{
   *   onState: (state: 'connecting'|'open'|'closed'|'refused',
   *             detail?: {code?: number, reason?: string, retryInMs?: number, attempt: number}) => void,
   *   onEvent: (event: object) => void,
   *   onAudio: (frame: ArrayBuffer, delta: object|null) => void,
   * }} handlers
   */
  constructor(url, { onState, onEvent, onAudio }) {
    this.url = url;
    this.onState = onState;
    this.onEvent = onEvent;
    this.onAudio = onAudio;
    this.socket = null;
    this.retryMs = RECONNECT_MIN_MS;
    this.attempt = 0; // reconnection attempts since the last session started
    // A binary frame belongs to the last `response.audio.delta` event before it.
    this.lastAudioDelta = null;
    this.sessionStarted = false; // on the current socket
  }

  connect() {
    this.onState('connecting', { attempt: this.attempt });
    const socket = new WebSocket(this.url);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    this.lastAudioDelta = null;
    this.sessionStarted = false;
    socket.onopen = () => this.onState('open');
    socket.onmessage = (message) => this.dispatch(message.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) {
        return;
      }
      this.socket = null;
      // Refused at the door by policy (a missing or wrong API key): asking again cannot help.
      // Later policy closes (a client that fell behind) and 1013 (busy) are worth a retry.
      const refused = event.code === WS_POLICY && !this.sessionStarted;
      const retryInMs = refused ? undefined : this.retryMs;
      if (!refused) {
        this.attempt += 1;
      }
      this.onState(refused ? 'refused' : 'closed', {
        code: event.code,
        reason: event.reason,
        retryInMs,
        attempt: this.attempt,
      });
      if (!refused) {
        setTimeout(() => this.connect(), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
      }
    };
  }

  dispatch(data) {
    if (typeof data !== 'string') {
      const delta = this.lastAudioDelta;
      this.lastAudioDelta = null;
      this.onAudio(data, delta);
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      this.onEvent({ type: 'error', error: { type: 'client', code: 'bad_json', message: data.slice(0, 200) } });
      return;
    }
    if (event.type === 'response.audio.delta') {
      this.lastAudioDelta = event;
    } else if (event.type === 'session.created') {
      // Not on open: a server that accepts and then refuses (busy) must not be asked every 0.5 s.
      this.sessionStarted = true;
      this.retryMs = RECONNECT_MIN_MS;
      this.attempt = 0;
    }
    this.onEvent(event);
  }

  get isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Sends one JSON event; false when the socket is not open. */
  send(event) {
    if (!this.isOpen) {
      return false;
    }
    this.socket.send(JSON.stringify(event));
    return true;
  }

  sendBinary(buffer) {
    if (!this.isOpen) {
      return false;
    }
    this.socket.send(buffer);
    return true;
  }
}

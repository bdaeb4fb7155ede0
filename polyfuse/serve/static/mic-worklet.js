// polyfuse page, live view: an AudioWorklet that hands the microphone's samples (already at the
// model's sample rate: the AudioContext resamples) to the page in ~50 ms chunks. It outputs silence.
"use strict";

class MicTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Float32Array(Math.max(128, Math.round(sampleRate / 20)));
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    let at = 0;
    while (at < channel.length) {
      const take = Math.min(channel.length - at, this.chunk.length - this.filled);
      this.chunk.set(channel.subarray(at, at + take), this.filled);
      this.filled += take;
      at += take;
      if (this.filled === this.chunk.length) {
        this.port.postMessage(this.chunk.slice());
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("polyfuse-mic", MicTap);

"""Independent physics references for the Bloch simulator's tests and benchmarks.

Written from the literature, not from ``simulators/physics``: an extended phase graph (Weigel, JMRI 2015),
hard-pulse Bloch rotations of a shaped RF pulse (rotation matrices, Rodrigues' formula), and a reader of
a ``.seq`` file's RF-spoiled gradient-echo schedule through pypulseq (the Pulseq reference implementation),
so that nothing here shares code with the engine under test.

Conventions of the references (the project's, docs/phantom.md): k-space ``s(k) = Σ_r ρ(r) exp(-2πi k·r)``;
a spin at off-resonance ``+Δf`` gives a demodulated signal turning as ``exp(-2πi Δf t)``. The EPG is
written in Weigel's own (right-handed) frame, where a pulse of phase 0 tips +z to ``-i`` and states carry
``exp(+2πi k·r)``; that frame is the mirror image (complex conjugate) of the project's, so every signal
leaves :mod:`.gre` conjugated.
"""

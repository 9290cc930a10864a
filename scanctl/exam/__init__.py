"""The exam layer: exam cards, the exam queue and its journal, MPPS (docs/exam.md)."""

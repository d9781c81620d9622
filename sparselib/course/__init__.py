"""What serves the book, not the library: exercise checkers, quizzes, the sparsity visualizer and
the recorded results the chapters load. The core of ``sparselib`` never imports this package."""

"""teachfit: choose the teacher that writes your synthetic instruction data, for your student.

Implements "Stronger Models are NOT Stronger Teachers for Instruction Tuning": score teachers'
responses, rank teachers by the Compatibility-Adjusted Reward CAR = r / (1 + beta * L), train,
evaluate and correlate. Importing teachfit never imports torch.
"""
__version__ = "0.1.0"

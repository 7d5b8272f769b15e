module laquant/ollama-render

go 1.19
